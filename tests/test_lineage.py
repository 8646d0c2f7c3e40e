"""What the driver logs about a study's inputs: data, teacher, the study files; the trials' system samples."""

import json
import time

import torch

from icd_tune.platform.tracking.lineage import (EXACT_CACHE, LIVE_TEACHER, NO_TEACHER, TEACHER_OUTPUTS_TAG, TrialLineage,
                                       data_sha256, dataset_input, file_sha256, teacher_tags)
from icd_tune.platform.metrics import (SYSTEM_CPU_PERCENT, SYSTEM_METRICS, SYSTEM_RSS_MB, is_logged_metric,
                                       is_trainer_metric)
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.tracking.study_record import command_line, override_params, written_files
from icd_tune.platform.raytune.system_metrics import SystemSampler, gpu_sample


def test_system_sampler_reports_cpu_and_memory_and_no_gpu_figures_on_the_cpu():
    sampler = SystemSampler(torch.device("cpu"))
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        sum(i * i for i in range(1000))
    sample = sampler.sample()
    assert set(sample) == {SYSTEM_CPU_PERCENT, SYSTEM_RSS_MB}
    assert sample[SYSTEM_CPU_PERCENT] > 20  # busy for the whole interval, one core
    assert sample[SYSTEM_RSS_MB] > 10
    assert gpu_sample(torch.device("cpu")) == {} and gpu_sample(None) == {}


def test_system_metrics_are_logged_but_are_not_trainer_metrics():
    for name in SYSTEM_METRICS:
        assert is_logged_metric(name) and not is_trainer_metric(name)
    assert is_logged_metric("val/acc1") and not is_logged_metric("trial/node_id")


def test_prune_keeps_only_the_latest_checkpoint(tmp_path):
    from ray import tune

    from icd_tune.platform.tracking.students import prune_checkpoints

    for i in range(3):
        (tmp_path / f"checkpoint_00000{i}").mkdir()
        (tmp_path / f"checkpoint_00000{i}" / "trainer.pt").write_bytes(b"x")
    (tmp_path / "result.json").write_text("{}")
    deleted = prune_checkpoints(tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000002")))
    assert len(deleted) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "result.json"]
    assert prune_checkpoints(None) == []


def test_dataset_input_names_the_content_its_splits_and_seed(tiny_data):
    from icd_tune.method.config import DataConfig

    cfg = DataConfig(name="synthetic", num_train=160, num_test=40, num_classes=4, val_fraction=0.2)
    entry = dataset_input(tiny_data, cfg)
    profile = json.loads(entry.dataset.profile)
    assert entry.dataset.name == "synthetic" and entry.dataset.digest == profile["sha256"][:16]
    assert (profile["num_train"], profile["num_val"], profile["num_test"]) == (128, 32, 40)
    assert profile["split_seed"] == 0 and profile["val_fraction"] == 0.2
    before = data_sha256(tiny_data)
    tiny_data.test_x[0, 0, 0, 0] ^= 1  # one pixel changes the digest
    assert data_sha256(tiny_data) != before


def test_teacher_tags_hash_the_checkpoint_file(tmp_path):
    from icd_tune.method.config import TeacherConfig

    path = tmp_path / "teacher.pth"
    path.write_bytes(b"weights")
    tags = teacher_tags(TeacherConfig(arch="resnet8"), {"source": "checkpoint", "path": str(path), "test_acc1": 71.5})
    assert tags["icd_tune.teacher.arch"] == "resnet8" and tags["icd_tune.teacher.checkpoint"] == str(path)
    assert tags["icd_tune.teacher.checkpoint_sha256"] == file_sha256(path) and len(file_sha256(path)) == 64
    assert tags["icd_tune.teacher.test_acc1"] == "71.5000"
    missing = teacher_tags(TeacherConfig(arch="resnet8"), {"source": "checkpoint", "path": str(tmp_path / "gone")})
    assert "icd_tune.teacher.checkpoint_sha256" not in missing  # a file only the workers see


def test_teacher_outputs_tag_follows_each_trials_loss(tiny_study):
    study = load_study(tiny_study("outputs", """
    grid:
      kd: {key: loss.kd_weight, levels: [0.0, 1.0]}
    """))
    study.base["loss"].update(contrastive_weight=0.0, invariance_weight=0.0)
    configs = [{"point": p.to_config()} for p in study.grid_points()]
    lineage = TrialLineage(study.base, 0, teachers={"one": ({"icd_tune.teacher.arch": "resnet8"}, False)})
    assert [lineage.tags(c)[TEACHER_OUTPUTS_TAG] for c in configs] == [NO_TEACHER, LIVE_TEACHER]
    lineage.teachers["one"] = ({"icd_tune.teacher.arch": "resnet8"}, True)
    assert lineage.tags(configs[1]) == {"icd_tune.teacher.arch": "resnet8", TEACHER_OUTPUTS_TAG: EXACT_CACHE}


def test_study_record_names_the_extends_chain_the_command_and_the_set_values(tmp_path, tiny_study):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "record.yaml").write_text("description: the grandparent\n")
    (tmp_path / "base.yaml").write_text("extends: shared/record.yaml\n")
    path = tiny_study("record", """
    extends: base.yaml
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0]}
    """)
    study = load_study(path, ["optim.lr=0.1", "loss.feat_dim=8", "optim.lr=0.2"])
    names = [(name, p.name) for name, p in written_files(study)]
    assert names == [("record.yaml", "record.yaml"), ("base.yaml", "base.yaml"), ("2-record.yaml", "record.yaml")]
    assert override_params(study) == {"set.optim.lr": "0.2", "set.loss.feat_dim": "8"}
    assert command_line(study, [str(path), "--set", "optim.lr=0.1 "]) == f"run_ablation.py {path} --set 'optim.lr=0.1 '"
    assert command_line(study, None).startswith(f"run_study({str(path)!r}) from Python")


def test_teacher_accuracy_comes_from_its_training_record_else_is_measured(tmp_path, tiny_data):
    from icd_tune.method.models import create_model
    from icd_tune.method.teachers import measure_test_acc1, save_teacher, teacher_test_acc1

    model = create_model("resnet8", 4)
    path = save_teacher(model, tmp_path / "t.pth", "resnet8", 4, {"final_metrics": {"test/acc1": 42.5}})
    assert teacher_test_acc1(model, tiny_data, {"source": "cache", "path": str(path)}) == 42.5
    measured = teacher_test_acc1(model, tiny_data, {"source": "checkpoint", "path": str(path)})
    assert measured == measure_test_acc1(model, tiny_data) and 0 <= measured <= 100
    assert measured * 40 / 100 == round(measured * 40 / 100)  # a whole number of the 40 test images
