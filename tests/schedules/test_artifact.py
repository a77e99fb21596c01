import torch

from odelt.ode.schedule import Schedule
from odelt.schedules.amed import AMEDSpec, AMEDStudent
from odelt.schedules.evaluate import Row, pareto_front, plan_from_schedule
from odelt.schedules.learn import LearnConfig, run_steps
from odelt.schedules.ld3 import LD3Student, StepSpec, uniform_grid
from odelt.schedules.make import Request, schedule_from_plan


def _perturb(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))


def test_amed_plugin_starts_as_its_plain_host(tiny, tiny_pairs):
    _, _, held = tiny_pairs
    for host in ("euler", "ipndm"):
        plugin = run_steps(tiny, AMEDStudent(AMEDSpec(host, (4,) * 4, 7), uniform_grid(2)).plan(), held.z, held.y)
        plain = run_steps(tiny, LD3Student(StepSpec(host, (4,) * 4, 7), uniform_grid(4), False).plan(), held.z, held.y)
        assert torch.allclose(plugin, plain, atol=1e-5)


def test_artifact_round_trip_reproduces_the_learned_rollout(tiny, tiny_pairs):
    _, _, held = tiny_pairs
    students = [
        ("ld3", LD3Student(StepSpec("ipndm", (2, 4, 4), "step", order=3), [0.0, 0.2, 0.6, 1.0])),
        ("amed", AMEDStudent(AMEDSpec("ipndm", (4, 2, 4, 4), 7), uniform_grid(2), da=0.2)),
        ("amed", AMEDStudent(AMEDSpec("amed", (4, 4, 2, 2), "step"), uniform_grid(2))),
    ]
    for method, student in students:
        _perturb(student)
        with torch.no_grad():
            want = run_steps(tiny, student.plan(), held.z, held.y)
        req = Request(method, student.plan().solver, 4, learn=LearnConfig())
        s = Schedule.from_dict(schedule_from_plan(student.plan(), req, "abc", {}).to_dict())   # JSON and back
        with torch.no_grad():
            got = run_steps(tiny, plan_from_schedule(s), held.z, held.y)
        assert torch.allclose(got, want, atol=1e-5), method


def test_pareto_front():
    rows = [Row(n, "m", "euler", 1, b, e, None, ()) for n, b, e in
            [("a", 8, 0.5), ("b", 16, 0.2), ("c", 16, 0.3), ("d", 24, 0.25), ("e", 32, 0.1)]]
    assert [r.name for r in pareto_front(rows)] == ["a", "b", "e"]
