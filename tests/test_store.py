import hashlib
import json
import re
import shutil
import sqlite3

import pytest
import sqlite_utils
import torch
from diffusers import UNet2DConditionModel
from helpers import EXAMPLE_PROFILE, FORMAT_FILES, with_metadata_fields

from imagic_lora import Profile, ProfileExists, ProfileNotFound, ProfileStore, read_profile_file
from imagic_lora.errors import StoreError
from imagic_lora.lora import add_lora, lora_state_dict
from imagic_lora.storedb import migrations, newer_error


def test_migrations_on_a_blank_database_give_the_exact_schema(tmp_path):
    db = sqlite_utils.Database(tmp_path / "blank.db")
    migrations().apply(db)
    columns = {c.name: c.type for c in db["profiles"].columns}
    assert columns == {
        "name": "TEXT", "source_prompt": "TEXT", "base_model": "TEXT", "base_fingerprint": "TEXT",
        "resolution": "INTEGER", "created_at": "TEXT", "format_version": "INTEGER", "library_version": "TEXT",
        "size_bytes": "INTEGER", "sha256": "TEXT", "metadata": "TEXT",
    }
    assert {c.name: c.type for c in db["profile_data"].columns} == {"name": "TEXT", "data": "BLOB"}
    assert db["profiles"].pks == db["profile_data"].pks == ["name"]
    assert [m.name for m in migrations().applied(db)] == ["m001_profiles", "m002_profile_data"]
    migrations().apply(db)  # applying again is a no-op
    assert [m.name for m in migrations().applied(db)] == ["m001_profiles", "m002_profile_data"]


def test_a_store_from_before_m002_keeps_every_profile(trained, tmp_path):
    """m002 moves each blob to profile_data; a store written by the previous version opens with all profiles."""
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    migrations().apply(db, stop_before="m002_profile_data")
    data = trained.to_bytes()
    row = {"name": "ball", "source_prompt": "p", "base_model": "builtin:tiny", "base_fingerprint": "x",
           "resolution": 64, "created_at": "t", "format_version": 1, "library_version": "0.1.0",
           "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
           "metadata": json.dumps(trained.metadata.to_dict(), sort_keys=True), "data": data}
    db["profiles"].insert(row)
    db.conn.close()
    frozen = tmp_path / "frozen.db"
    shutil.copy(path, frozen)
    store = ProfileStore(path)
    assert store.get_bytes("ball") == data
    assert "data" not in {c.name for c in sqlite_utils.Database(path)["profiles"].columns}

    # a store that cannot be migrated (here: marked by a newer version) is still read from where its data is
    with sqlite3.connect(frozen) as conn:
        conn.execute("insert into _sqlite_migrations (migration_set, name, applied_at) "
                     "values ('imagic-lora', 'm999_future', 'later')")
    old_store = ProfileStore(frozen)
    assert old_store.get_bytes("ball") == data
    assert old_store.verify() == (1, [str(newer_error(frozen, ["m999_future"]))])
    with pytest.raises(StoreError, match="newer imagic-lora"):
        old_store.remove("ball")


def test_store_defaults_to_the_user_dir_from_the_env(isolated_user_dir):
    assert ProfileStore().path == isolated_user_dir / "profiles.db"


def test_save_get_rename_remove(trained):
    store = ProfileStore()
    store.save(trained)
    with pytest.raises(ProfileExists, match="profile 'ball' already exists"):
        store.save(trained)
    loaded = store.get("ball")
    assert torch.equal(loaded.e_opt, trained.e_opt)
    assert loaded.lora.keys() == trained.lora.keys()
    assert all(torch.equal(loaded.lora[k], trained.lora[k].half().float()) for k in trained.lora)
    store.rename("ball", "rex")
    assert [row["name"] for row in store.list()] == ["rex"]
    assert store.get("rex").name == "rex"
    with pytest.raises(ProfileNotFound, match=re.escape("profile 'ball' not found. Try: imagic-lora profiles list")):
        store.get("ball")
    store.remove("rex")
    assert store.list() == []


def test_listing_never_reads_tensor_blobs(trained, tmp_path):
    store = ProfileStore(tmp_path / "p.db")
    store.save(trained)
    queries = []
    store.conn.set_trace_callback(queries.append)
    rows = store.list()
    store.info("ball")
    assert rows[0]["name"] == "ball" and "data" not in rows[0]
    selects = [q for q in queries if q.lower().startswith("select")]
    columns = [c.strip() for q in selects for c in q[len("select "):].split(" from ")[0].split(",")]
    assert selects and "name" in columns and "data" not in columns and "*" not in columns


def test_a_failed_write_changes_nothing(trained, tmp_path):
    store = ProfileStore(tmp_path / "p.db")
    store.save(trained)
    before = store.list()
    store.conn.execute("create trigger refuse before insert on profiles begin select raise(abort, 'disk full'); end")
    with pytest.raises(StoreError, match=r"no space left to write the profile store .*; nothing was changed"):
        store.rename("ball", "rex")
    assert store.list() == before


def test_example_profile_file_is_readable_and_importable():
    profile = read_profile_file(EXAMPLE_PROFILE)
    assert profile.metadata.base_model == "builtin:tiny"
    imported = ProfileStore().import_file(EXAMPLE_PROFILE, name="example2")
    assert imported.name == "example2"
    assert torch.equal(ProfileStore().get("example2").e_opt, profile.e_opt)


def test_an_sd15_size_profile_at_rank_4_fits_in_2_mib():
    """Real SD 1.5 UNet shapes (built on the meta device) serialized with zero tensors."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64, attention_head_dim=8)
        add_lora(unet, 4, 4)
        shapes = {key: value.shape for key, value in lora_state_dict_shapes(unet).items()}
    lora = {key: torch.zeros(shape) for key, shape in shapes.items()}
    assert sum(v.numel() for v in lora.values()) == 797_184
    profile = Profile(
        name="sd15", e_opt=torch.zeros(1, 77, 768), source_embedding=torch.zeros(1, 77, 768), lora=lora,
        thumbnail=torch.zeros(64, 64, 3, dtype=torch.uint8), base_sample=torch.zeros(4 * 1100),
        metadata=read_profile_file(FORMAT_FILES[2]).metadata,
        image_latents=torch.zeros(1, 4, 64, 64), start_latents=torch.zeros(1, 4, 64, 64),  # format 2, 512 px
    )
    profile = with_metadata_fields(profile, source_prompt="a photo of a dog " * 4)
    size = len(profile.to_bytes())
    print(f"SD 1.5 profile at rank 4: {size} bytes ({size / 2**20:.2f} MiB)")
    assert size <= 2 * 2**20


def lora_state_dict_shapes(unet):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="imagic"))
    return {"unet." + key: value for key, value in state.items()}


def test_lora_state_dict_uses_diffusers_names(tiny):
    add_lora(tiny.pipe.unet, 4, 4)
    keys = list(lora_state_dict(tiny.pipe.unet))
    assert keys and all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in keys)
