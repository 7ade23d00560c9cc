"""A separate process that writes to a profile store, for the crash and concurrency tests.

    python store_worker.py churn DB PROFILE_FILE SEED     # save/rename/import/rm until killed
    python store_worker.py writer DB PROFILE_FILE INDEX   # save and import a fixed set, then exit
"""

import random
import sys
from pathlib import Path

from imagic_lora.profile import Profile
from imagic_lora.store import ProfileStore

WRITES, IMPORTS = 4, 2


def churn(store: ProfileStore, profile: Profile, source: Path, seed: int) -> None:
    rng = random.Random(seed)
    print("ready", flush=True)
    for count in range(10**9):
        names = {row["name"] for row in store.list()}
        name = f"c{rng.randrange(6)}"
        action = rng.choice(["save", "import", "rename", "rm"])
        if action == "save":
            store.save(profile.renamed(name), replace=True)
        elif action == "import":
            store.import_file(source, name=name, replace=True)
        elif name in names and action == "rename":
            new = f"c{rng.randrange(6)}"
            if new not in names:
                store.rename(name, new)
        elif name in names:
            store.remove(name)
        print(f"op {count}", flush=True)


def writer(store: ProfileStore, profile: Profile, source: Path, index: int) -> None:
    for j in range(WRITES):
        store.save(profile.renamed(f"w{index}-{j}"))
    for j in range(IMPORTS):
        store.import_file(source, name=f"i{index}-{j}")
    store.list()


def main() -> None:
    mode, db, source, number = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    store = ProfileStore(db)
    profile = Profile.from_bytes(source.read_bytes())
    {"churn": churn, "writer": writer}[mode](store, profile, source, number)


if __name__ == "__main__":
    main()
