"""A miniature world of coloured shapes where the right edit is known pixel for pixel."""
