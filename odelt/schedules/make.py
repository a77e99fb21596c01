"""Compose a schedule request into the runtime's artifact: validate, learn (or compute), convert.

Stages: `check_request` (bad input -> one-line ScheduleError before any work), `learn_schedule`
(teacher pairs, then LD3 / AMED / per-step-length learning), `schedule_from_plan` (torch plan ->
`odelt.ode.schedule.Schedule`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from odelt import validate
from odelt.errors import ScheduleError
from odelt.models.dit import DiT
from odelt.schedules.learn import LearnConfig, SolverSteps
from odelt.schedules.problem import TEACHER_STEPS, make_pairs, split

LEARNED = ("ld3", "amed")


@dataclass(frozen=True)
class Request:
    method: str                       # 'ld3' | 'amed' | a heuristic name ('uniform', ...)
    solver: str
    nfe: int | None                   # None only with a block budget (the search picks it)
    length: int | None = None         # one length for every step (None: the full depth)
    budget: int | None = None         # block budget: per-step lengths are searched
    dt_mode: str | int = "step"       # 'step': dt_base from each step's size; or a fixed level
    order: int | None = None
    learn: LearnConfig = field(default_factory=LearnConfig)


def check_request(model: DiT, req: Request) -> None:
    from odelt.schedules.ld3 import LD3_SOLVERS, steps_for
    from odelt.schedules.amed import AMED_HOSTS
    from odelt.schedules.lengths import check_budget

    cfg = model.config
    drivable = {"ld3": LD3_SOLVERS, "amed": AMED_HOSTS}.get(req.method)
    if drivable is not None and req.solver not in drivable:
        raise ScheduleError(f"method {req.method} cannot drive solver {req.solver!r}; expected one of {list(drivable)}")
    if req.nfe is not None:
        validate.count("--nfe", req.nfe, 1, validate.MAX_STEPS)
        if req.method == "amed":
            if req.nfe % 2:
                raise ScheduleError(f"AMED makes 2 calls per step: NFE must be even, found {req.nfe}")
        else:
            steps_for(req.solver, req.nfe)
    elif req.budget is None:
        raise ScheduleError("NFE is required unless per-step lengths are searched under a block budget")
    if req.dt_mode == "step" and cfg.ignore_dt:
        raise ScheduleError("per-step dt_base needs a model with shortcut levels, found config.ignore_dt=True "
                            "(use a fixed dt_base)")
    if req.length is not None and req.length not in cfg.lengths:
        raise ScheduleError(f"length must be one the model was trained at {list(cfg.lengths)}, found {req.length}")
    if req.budget is not None:
        if req.method != "ld3":
            raise ScheduleError(f"per-step lengths under a block budget are learned with --method ld3, found {req.method}")
        check_budget(req.budget, cfg.lengths, req.nfe)


def learn_schedule(model: DiT, req: Request, model_hash: str | None, progress: bool = True,
                   cache_dir: str | None = None):
    """Run the request; returns a validated runtime Schedule."""
    check_request(model, req)
    if req.method not in LEARNED:
        return heuristic(model, req, model_hash)
    t0 = time.time()
    lc = req.learn
    pairs = make_pairs(model, lc.n_pairs, lc.seed, key=model_hash, cache_dir=cache_dir)
    train, val = split(pairs, lc.n_train)
    req, dt_info = choose_dt_mode(model, req, val)
    plan, info = _learn(model, req, train, val, progress)
    info = {**dt_info, **info}          # the student's actual mode wins over "searched"
    info.update({"teacher": f"euler{TEACHER_STEPS}@full-length,dt_base=7", "loss": "soft-surrogate-l2",
                 "distance": "l2-data-space", "n_train": lc.n_train, "n_val": lc.n_pairs - lc.n_train,
                 "learn": asdict(lc), "train_seconds": round(time.time() - t0, 1)})
    return schedule_from_plan(plan, req, model_hash, info)


def heuristic(model: DiT, req: Request, model_hash: str | None):
    """A runtime heuristic grid (uniform, shifted, cosine) at one length, for this model."""
    import dataclasses

    from odelt.ode.heuristics import KINDS, heuristic_schedule
    from odelt.schedules.ld3 import step_levels, steps_for

    if req.method not in KINDS:
        raise ScheduleError(f"unknown method {req.method!r}; expected one of {list(LEARNED) + list(KINDS)}")
    length = req.length or model.config.depth
    s = heuristic_schedule(req.method, req.solver, steps_for(req.solver, req.nfe), length, req.order)
    levels = s.dt_base if req.dt_mode == "auto" else step_levels(s.t_grid, req.dt_mode)
    return dataclasses.replace(s, dt_base=tuple(levels), model_hash=model_hash).validate()


def resolve_dt_mode(model: DiT, req: Request) -> Request:
    """A model without shortcut levels ignores dt_base: 'auto' becomes the level it sees (0)."""
    import dataclasses

    if req.dt_mode == "auto" and model.config.ignore_dt:
        return dataclasses.replace(req, dt_mode=0)
    return req


def _initial_student(model: DiT, req: Request, dt_mode: str | int):
    from odelt.schedules.amed import AMEDSpec, AMEDStudent
    from odelt.schedules.ld3 import LD3Student, StepSpec, steps_for, uniform_grid

    full = req.length or model.config.depth
    if req.method == "amed":
        return AMEDStudent(AMEDSpec(req.solver, (full,) * req.nfe, dt_mode, req.order), uniform_grid(req.nfe // 2))
    n = steps_for(req.solver, req.nfe) if req.nfe else -(-req.budget // max(model.config.lengths))
    lengths = (full,) * n if req.nfe or not req.budget else (max(model.config.lengths),) * n
    return LD3Student(StepSpec(req.solver, lengths, dt_mode, req.order), uniform_grid(n), decoupled=False)


def choose_dt_mode(model: DiT, req: Request, val) -> tuple[Request, dict]:
    """dt_base 'auto': measure per-step levels against the fixed flow-matching level 7 on the
    validation pairs at the initial (uniform) schedule and keep the better one."""
    import dataclasses

    from odelt.schedules.learn import eval_rmse
    from odelt.ode.schedule import FM_LEVEL

    req = resolve_dt_mode(model, req)
    if req.dt_mode == "auto" and req.budget is not None:
        return req, {"dt_mode": "searched with the lengths"}
    if req.dt_mode != "auto":
        return req, {"dt_mode": req.dt_mode}
    errs = {str(m): eval_rmse(model, _initial_student(model, req, m), val) for m in ("step", FM_LEVEL)}
    best = min(errs, key=errs.get)
    mode: str | int = "step" if best == "step" else int(best)
    return dataclasses.replace(req, dt_mode=mode), {"dt_mode": mode, "dt_mode_val_rmse_at_init": errs}


def _learn(model: DiT, req: Request, train, val, progress: bool) -> tuple[SolverSteps, dict]:
    from odelt.schedules.amed import AMEDSpec, learn_amed
    from odelt.schedules.ld3 import StepSpec, learn_ld3, steps_for
    from odelt.schedules.lengths import search_lengths

    full = req.length or model.config.depth
    if req.method == "amed":
        spec = AMEDSpec(req.solver, (full,) * req.nfe, req.dt_mode, req.order)
        student, hist = learn_amed(model, spec, train, val, req.learn, progress=progress)
    elif req.budget is not None:
        nfes = [req.nfe] if req.nfe else None
        best = search_lengths(model, req.solver, req.budget, train, val, req.learn, nfes, req.dt_mode,
                              progress=progress)[0]
        student, hist = best.student, best.history
    else:
        spec = StepSpec(req.solver, (full,) * steps_for(req.solver, req.nfe), req.dt_mode, req.order)
        student, hist = learn_ld3(model, spec, train, val, req.learn, progress=progress)
    with_grad_off = student.plan()
    info = {"dt_mode": student.spec.dt_mode, "val_rmse_init": hist.init_val, "val_rmse": hist.best_val, "iters": hist.iters,
            "ball_radius": hist.radius, "raw_params": {k: v.detach().tolist() for k, v in student.state_dict().items()
                                                       if v.dtype.is_floating_point}}
    return with_grad_off, info


def _floats(t) -> tuple[float, ...] | None:
    return None if t is None else tuple(float(v) for v in t.detach().reshape(-1).tolist())


def schedule_from_plan(plan: SolverSteps, req: Request, model_hash: str | None, provenance: dict):
    from odelt.ode.schedule import Schedule
    from odelt.ode.solvers import nfe_for

    p = plan.params
    order = p.get("order")
    steps = len(plan.lengths)
    name = f"{req.method}:{plan.solver}:{nfe_for(plan.solver, steps)}:b{sum(plan.lengths) * _calls(plan.solver)}"
    s = Schedule(solver=plan.solver, t_grid=_floats(plan.ts), lengths=tuple(int(v) for v in plan.lengths),
                 dt_base=tuple(int(v) for v in plan.dt_bases), nfe=nfe_for(plan.solver, steps), order=order,
                 t_eval=_floats(plan.t_eval), t_mid=_floats(p.get("t_mid")), scale=_floats(p.get("scale")),
                 model_hash=model_hash, name=name, method=req.method if req.method in LEARNED else "heuristic",
                 provenance=provenance)
    return s.validate()


def _calls(solver: str) -> int:
    from odelt.ode.solvers import SOLVER_INFO

    return SOLVER_INFO[solver].calls_per_step or 1
