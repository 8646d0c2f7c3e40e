"""The teacher-output cache is decided once: --dry-run announces what the real run's prepare stage does.

A study of three teachers, each with cache settings of its own: one turned off, one on
``auto`` whose few trial-epochs do not pay for the build, one forced on with its own dtype.
"""

import io
import re

from icd_tune.method.models import create_model
from icd_tune.platform.cli.main import print_plan
from icd_tune.platform.stages.plan import RunOptions, resolve_plan
from icd_tune.platform.stages.prepare import Prepared, check_inputs, prepare_output_cache
from icd_tune.platform.study.definition import load_study

TEACHERS = """
mode: grid
grid:
  teacher:
    levels:
      - {label: off, set: {teacher.cache: "off"}}
      - {label: auto, set: {teacher.cache: auto, teacher.optim.epochs: 2}}
      - {label: forced, set: {teacher.cache: "on", teacher.optim.epochs: 3, teacher.cache_dtype: float32}}
seeds: [0, 1]
"""


def dry_run_decisions(study, on_cluster: bool) -> dict:
    out = io.StringIO()
    print_plan(study, out, on_cluster=on_cluster)
    found = re.findall(r"^# teacher-output cache of (\S+): (on|off) \((.*)\)$", out.getvalue(), re.M)
    table = re.findall(r"^#   resnet8\s+2 trial\(s\)  output cache (on |off)", out.getvalue(), re.M)
    return {identity: (state == "on", reason) for identity, state, reason in found}, [t.strip() for t in table]


def real_run_decisions(study, tmp_path, hosts: set[str]):
    """The prepare stage's decisions, on a driver with the trials' device (the CPU) and the given hosts."""
    plan = resolve_plan(study, RunOptions(results_dir=str(tmp_path / "results")))
    data = check_inputs(plan)
    prepared = Prepared(data=data, hosts=hosts)
    for identity, use in plan.teacher_uses().items():  # untrained nets: the decision reads only their shapes
        prepared.teachers[identity] = create_model(use.cfg.arch, data.num_classes)
    prepared.teacher_info = {"teachers": {identity: {} for identity in prepared.teachers}}
    logs: list[str] = []
    spec = prepare_output_cache(plan, prepared, logs.append)
    found = {}
    for line in logs:
        m = re.match(r"teacher-output cache of (\S+): (.*)$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return plan, spec, found


def test_dry_run_and_real_run_decide_each_teachers_cache_alike(tiny_study, tmp_path):
    study = load_study(tiny_study("three_teachers", TEACHERS, epochs=2, steps=1))
    plan = resolve_plan(study, RunOptions(results_dir=str(tmp_path / "plan")))
    identities = list(plan.teacher_uses())
    assert len(identities) == 3
    off, auto, forced = identities

    announced, table = dry_run_decisions(study, on_cluster=True)
    assert set(announced) == set(identities)
    assert announced[off] == (False, "cache off (teacher.cache: off)")
    enabled, reason = announced[auto]
    assert not enabled and reason.startswith("off: its 2 trial(s) run 4 trial-epochs, fewer than the 162")
    assert announced[forced][0] and announced[forced][1].startswith("cache on (teacher.cache: on)")
    assert table == ["off", "off", "on"]  # the teacher table agrees with the cache lines

    _, spec, done = real_run_decisions(study, tmp_path, hosts={"node-a", "node-b"})  # a cluster: no build here
    assert done == {identity: reason for identity, (_, reason) in announced.items()}
    assert spec is not None and spec.teachers == {forced: "float32"}  # the forced teacher's own dtype


def test_single_teacher_dry_run_matches_the_real_run(tiny_study, tmp_path):
    study = load_study(tiny_study("one_teacher", "mode: grid\ngrid:\n  w: {key: loss.invariance_weight, levels: [0.0, 1.0]}\n"
                                  "seeds: [0]\n", epochs=2, steps=1))
    out = io.StringIO()
    print_plan(study, out)
    line = re.search(r"^# teacher-output cache: (on|off) \((.*)\)$", out.getvalue(), re.M)
    assert line and line.group(1) == "off"
    assert line.group(2).startswith("off: this study runs 4 trial-epochs, fewer than the 162")
    plan = resolve_plan(study, RunOptions(results_dir=str(tmp_path / "results")))
    data = check_inputs(plan)
    prepared = Prepared(data=data, hosts={"node-a"})
    (identity, use), = plan.teacher_uses().items()
    prepared.teachers[identity] = create_model(use.cfg.arch, data.num_classes)
    logs: list[str] = []
    assert prepare_output_cache(plan, prepared, logs.append) is None
    assert logs == [f"teacher-output cache: {line.group(2)}"]
