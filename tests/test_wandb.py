"""W&B logging (``report_to: [wandb]``), offline: the metrics the pretraining loop logs to TensorBoard reach a W&B run
with the same names, steps and values, read back from the run's own files (TensorBoard's event reader, wandb's
record reader). No account and no network: W&B's offline mode writes the run to disk (``wandb sync`` uploads it
later)."""

from __future__ import annotations

import json
import math
import struct

from pretrain_utils import run_inprocess, write_config


def tensorboard_scalars(log_dir) -> dict[str, dict[int, float]]:
    """Every scalar under ``log_dir`` (the run's writer, and the folder accelerate's tracker adds for the
    hyperparameters), read with TensorBoard's own event reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for folder in sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            assert tag not in scalars, f"{tag} written twice"
            scalars[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    return scalars


def wandb_records(path) -> list[bytes]:
    """The serialized records of a .wandb file. The file is wandb's transaction log in LevelDB's log format: a 7-byte
    header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (checksum, length, type:
    1 whole record, 2/3/4 its first/middle/last part), a block's tail shorter than a header left as padding. wandb
    0.31 writes and reads it in its Go core and ships no Python reader, so the framing is read here; each record is
    parsed with wandb's own protobuf class."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, parts, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            parts = chunk
        elif kind == 3:
            parts += chunk
        elif kind == 4:
            records.append(parts + chunk)
    return records


def wandb_history(wandb_dir) -> tuple[dict[str, dict[int, float]], dict]:
    """(metric -> step -> value, the run's config) from the offline run's .wandb file (what ``wandb sync``
    uploads)."""
    from wandb.proto import wandb_internal_pb2

    files = list(wandb_dir.rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {wandb_dir}, found {files}"
    history, config = {}, {}
    for data in wandb_records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = items.pop("_step", record.history.step.num)
            for key, value in items.items():
                if not key.startswith("_"):
                    history.setdefault(key, {})[step] = value
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config


def test_wandb_offline_run_gets_the_tensorboard_metrics(tmp_path, monkeypatch, demo_tokenized):
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    monkeypatch.delenv("WANDB_DISABLED", raising=False)  # (tests/conftest.py disables W&B elsewhere)
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(key, value)
    config = write_config(tmp_path)
    run = tmp_path / "run"
    run_inprocess(config, "--output_dir", str(run), "--max_steps", "6", "--eval_every", "3", "--save_every", "100",
                  "--report_to", "[tensorboard, wandb]", "--run_name", "wandb-check")

    tb = tensorboard_scalars(run / "logs")
    wb, wb_config = wandb_history(wandb_dir)
    assert {"loss", "lr", "grad_norm", "val_loss"} <= set(tb), sorted(tb)
    assert sorted(wb) == sorted(tb)  # the same names
    for name, by_step in tb.items():
        assert sorted(wb[name]) == sorted(by_step), name  # the same steps
        for step, value in by_step.items():  # TensorBoard keeps float32
            assert math.isclose(wb[name][step], value, rel_tol=1e-6, abs_tol=1e-7), (name, step)
    assert sorted(tb["loss"]) == [1, 2, 3, 4, 5, 6] and sorted(tb["val_loss"]) == [3, 6]
    assert wb_config["max_steps"] == 6 and wb_config["run_name"] == "wandb-check"
