"""Remove encoder slots from a model folder: ``prune(model_dir, drop, out)``.

The stage's part is the policy around the one executor (:mod:`encslim.models.executor`, shared with
export): open the folder once (:class:`~encslim.models.folder.ModelFolder`: config, family, every
weight header), build the plan, check the weights and side files against it, choose the executor's
mode (streaming over shards, or in memory when the model fits), check the output, verify the pruned
model against the masked one, and write the manifest. Every source file is read once.

The output goes to a temporary folder renamed at the end; the source is never modified.

A dry run, and streaming without verification or with module-local verification (the automatic choice
when the model does not fit in memory: :func:`~encslim.prune.verify.verify_module_local`), never build
the model: for a family with a
torch-free plan (``Family.plan``, the native one) the plan comes from ``config.json`` alone and the
weights are checked by their headers, so neither torch nor transformers is imported.
"""

import logging
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import ConfigError, ModelLoadError, VerificationError
from ..files import atomic_output_dir, check_output_path
from ..models.adapter import Adapter
from ..models.tokens import CONFIG_KEY as BUDGET_KEY
from ..models.tokens import TokenBudget, parse_budget
from ..models.executor import check_side_files, execute
from ..models.folder import Checkpoint, ModelFolder
from ..models.plan import JsonOp, RemovalPlan, check_plan, describe_plan
from ..models.registry import TorchFreePlan
from ..models.shards import parse_size
from ..models.slots import SlotSet, split_names
from ..provenance import StageRecord, write_manifest
from .config import PruneConfig
from .select import Selection

if TYPE_CHECKING:
    from ..models.adapter import Config

logger = logging.getLogger(__name__)

PathArg = Union[str, "PathLike[str]"]
DataArg = Union[PathArg, Iterable[PathArg]]
Planner = Union[Adapter, TorchFreePlan]  # what builds the plan: the adapter, or the family's torch-free plan module
# (planner, its config, plan, folder, summary) of :func:`prepare`
Prepared = tuple[Planner, Any, RemovalPlan, ModelFolder, dict[str, Any]]


# ---------------------------------------------------------------------------- reading the model
def open_folder(model_dir: PathArg | ModelFolder, encoders: Mapping[str, str] | None = None) -> ModelFolder:
    """``model_dir`` as a :class:`~encslim.models.folder.ModelFolder` (opened once; one passes through),
    with the encoder folders ``encoders`` (``{slot: folder}``, ``--encoder``)."""
    return ModelFolder.open(model_dir, encoders=encoders)


def _weights(folder: ModelFolder) -> Checkpoint:
    """The folder's checkpoint (``ValueError`` for a folder opened without its weights: a bug)."""
    if folder.weights is None:
        raise ValueError(f"{folder.path} was opened without its weights")
    return folder.weights


def _adapter_and_config(folder: ModelFolder) -> tuple[Adapter, "Config"]:
    adapter = folder.adapter
    return adapter, adapter.read_config(str(folder.path))


def _torch_free(folder: ModelFolder,
                config: Mapping[str, Any] | None = None) -> tuple[TorchFreePlan, Any] | None:
    """``(family plan module, light config)`` of the family's torch-free plan, or ``None``.

    Args:
        folder: the :class:`~encslim.models.folder.ModelFolder`.
        config: the ``config.json`` document to read (default: the folder's).
    """
    from ..models.registry import torch_free_plan

    data = folder.config if config is None else config
    module = torch_free_plan(data)
    if module is None:
        return None
    light = module.plan_config(data)
    return None if light is None else (module, light)


def model_slots(model_dir: PathArg | ModelFolder) -> list[str]:
    """The slot names of the model in ``model_dir`` (a folder or a ``ModelFolder``; reads config.json only)."""
    folder = model_dir if isinstance(model_dir, ModelFolder) else ModelFolder.open(model_dir, weights=False)
    found = _torch_free(folder)
    if found is not None:
        names: list[str] = list(found[1].slot_names)
        return names
    adapter, config = _adapter_and_config(folder)
    return adapter.slot_names(config)


def _check_structure(folder: ModelFolder, shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """The meta-model structure check of a ``ModelFolder``'s weights ``shapes`` (builds the empty model: torch)."""
    from .verify import check_structure

    adapter, config = _adapter_and_config(folder)
    check_structure(adapter, config, shapes, where)


def prepare(model_dir: PathArg | ModelFolder, drop: Iterable[str], torch_free: bool = False,
            budget: TokenBudget | None = None) -> Prepared:
    """Read a model folder and build its removal plan, checking weights and side files against it.

    Args:
        model_dir: the model folder (a path or a :class:`~encslim.models.folder.ModelFolder`).
        drop: slot names to remove (none: only ``budget`` is applied, which must then be given).
        torch_free: for a family with a torch-free plan (``Family.plan``) whose config it can read,
            build the plan from config.json and check the weights by their header (the family's
            ``check_header``) instead of against an empty model: neither torch nor transformers is imported.
        budget: the token budget the output's config.json carries (:func:`budget_op`; budget 1: no key);
            ``None``: the source's, unchanged.

    Returns:
        ``(adapter, config, plan, folder, summary)``; ``summary`` is :func:`describe_plan`'s dict plus
        ``config_diff`` and ``processor_diff`` lines. On the torch-free path ``adapter`` is the family's
        plan module and ``config`` its light config.

    Raises:
        ModelLoadError, PlanError, ConfigError: see :func:`prune`.
    """
    folder = open_folder(model_dir)
    names = list(drop)
    found = _torch_free(folder) if torch_free and names else None
    planner: Planner
    if found is not None:
        planner, config = found
    else:
        planner, config = _adapter_and_config(folder)
    if names or budget is None or not isinstance(planner, Adapter):
        plan: RemovalPlan = planner.removal_plan(config, names)
    else:  # nothing to remove: the plan only sets the budget
        plan = RemovalPlan(planner.model_type, planner.fusion_class(config).value, planner.slot_names(config), [])
    if budget is not None:
        plan.config_patch = [*plan.config_patch, budget_op(budget)]
        plan.notes.append(f"token budget: {budget.label if budget.active else 'every token'} (config.json "
                          f"{BUDGET_KEY})")
    weights = _weights(folder)
    shapes = weights.shapes()
    check_plan(plan, shapes)
    if isinstance(planner, Adapter):
        from .verify import check_structure

        check_structure(planner, config, shapes, f"{folder.path}")
    else:
        planner.check_header(config, shapes, f"{folder.path}")
    summary: dict[str, Any] = dict(describe_plan(plan, shapes, weights.itemsizes()))
    summary.update(check_side_files(folder, plan))
    return planner, config, plan, folder, summary


# ---------------------------------------------------------------------------- token budget
def budget_op(budget: TokenBudget) -> JsonOp:
    """The config.json patch that makes a model carry ``budget`` (budget 1: the key goes)."""
    if budget.active:
        return {"op": "set", "path": BUDGET_KEY, "value": budget.to_dict()}
    return {"op": "delete", "path": BUDGET_KEY, "optional": True}


def chosen_budget(c: PruneConfig, selection: Mapping[str, Any] | None) -> tuple[TokenBudget | None, str]:
    """``(budget, where from)`` the output carries: ``--token-budget``, else the selection's, else ``None``
    (the source's budget, unchanged: ``"source"``)."""
    given = c.chosen_budget()
    if given is not None:
        return given, "--token-budget"
    picked = (selection or {}).get(BUDGET_KEY)
    if picked is not None:
        return parse_budget(picked) or TokenBudget("pool", 1.0), "selection"
    return None, "source"


def _check_budget(folder: ModelFolder, budget: TokenBudget | None) -> None:
    """Refuse (``ConfigError``, one line) a budget the model's family cannot take, before anything is written."""
    if budget is not None and budget.active:
        adapter, config = _adapter_and_config(folder)
        adapter.check_token_budget(config, budget)


def _budget_record(folder: ModelFolder, out: Path, budget: TokenBudget | None, where: str) -> dict[str, Any] | None:
    """The manifest's ``token_budget`` entry: the budget in force, where it came from, image tokens per image
    before (the source as it is) and after; ``None`` when neither the source nor the output has a budget."""
    had = folder.config.get(BUDGET_KEY) is not None
    if budget is None and not had:
        return None
    adapter, before = _adapter_and_config(folder)
    pruned = ModelFolder.open(out, weights=False)
    after = pruned.adapter.read_config(str(out))
    carried = parse_budget(getattr(after, BUDGET_KEY, None))
    return {**(carried.to_dict() if carried is not None else {"method": None, "budget": 1.0}), "from": where,
            "source_budget": folder.config.get(BUDGET_KEY),
            "image_tokens": {"before": adapter.image_tokens(before), "after": pruned.adapter.image_tokens(after)}}


def _check_output(tmp: Path, torch_free: bool, config: Mapping[str, Any]) -> None:
    """Check the pruned folder's weights against its config.json (header check on the torch-free path).

    Args:
        tmp: the output folder; torch_free: take the header check; config: its config.json document.

    Raises:
        VerificationError: they do not fit (a bug in the removal plan).
    """
    try:
        shapes = Checkpoint.open(tmp).shapes()
        from ..models.registry import torch_free_plan

        module = torch_free_plan(config) if torch_free else None
        light = None if module is None else module.plan_config(config)
        if module is not None and light is not None:
            module.check_header(light, shapes, "the pruned output")
        else:
            _check_structure(ModelFolder.open(tmp, weights=False), shapes, "the pruned output")
    except ModelLoadError as err:
        raise VerificationError(f"{err} (a bug in the removal plan: report it); nothing was written") from err


def _fits_in_memory(checkpoint: Checkpoint) -> bool:
    """Whether the masked-full and the pruned model fit in memory together, in fp32."""
    import psutil

    fp32 = sum(t.numel * 4 for t in checkpoint.tensors.values())
    available: int = psutil.virtual_memory().available
    return 2.5 * fp32 < available


VERIFY_METHODS = ("auto", "full", "module-local")


def verification_method(verify: bool | None, method: str | None, fits: bool) -> tuple[str | None, str]:
    """``(method, reason)``: which verification runs (``"full"``, ``"module-local"`` or ``None``) and why.

    Args:
        verify: ``False`` skips it; ``None``/``True`` verify.
        method: one of :data:`VERIFY_METHODS`; ``"auto"``: full logits when both models fit in memory,
            else module-local.
        fits: whether they fit (:func:`_fits_in_memory`).

    Raises:
        ConfigError: an unknown method, or a method named together with ``verify=False``.
    """
    method = method or "auto"
    if method not in VERIFY_METHODS:
        raise ConfigError(f"verification method '{method}' unknown; use one of {', '.join(VERIFY_METHODS)}")
    if verify is False:
        if method != "auto":
            raise ConfigError(f"--no-verify contradicts --verify-method {method}; pass one of them")
        return None, "--no-verify"
    if method != "auto":
        return method, f"--verify-method {method}"
    if fits:
        return "full", "the masked and the pruned model fit in memory"
    return "module-local", "the model does not fit in memory (full verification builds both models in fp32)"


def _verify(method: str | None, reason: str, checkpoint: Checkpoint, tmp: Path, plan: RemovalPlan,
            data: DataArg | None, num_samples: int, source: ModelFolder | None = None) -> dict[str, Any]:
    """The manifest's verification entry: run ``method`` on the pruned folder ``tmp`` (see :func:`prune`)."""
    if method is None:
        return {"skipped": True, "reason": reason}
    if method == "module-local":
        from .verify import verify_module_local

        return verify_module_local(checkpoint, tmp, plan, reason=reason)
    from .verify import verify_pruned

    model: PathArg = checkpoint.folder if source is None else source  # the ModelFolder: its encoder folders too
    return {**verify_pruned(model, tmp, plan, data=data, num_samples=num_samples), "reason": reason}


def prune(model_dir: PathArg | ModelFolder, drop: Selection | SlotSet | str | Iterable[str], out: PathArg | None = None,
          config: PruneConfig | Mapping[str, Any] | None = None, *, data: DataArg | None = None,
          selection: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Remove encoder slots ``drop`` from the model in ``model_dir`` and write the result to ``out``.

    Args:
        model_dir: a model folder (config.json + safetensors weights) of a supported family, or its
            :class:`~encslim.models.folder.ModelFolder` (every source file is then read once).
        drop: the slots to remove: a :class:`~encslim.models.slots.SlotSet` (its masked slots), slot names
            (a list, or one string ``"sam,clip"``: :func:`~encslim.models.slots.split_names`), or a
            :class:`~encslim.prune.select.Selection` (then recorded in the manifest as ``selection`` is).
            The removal plan checks the names against the model's slots (``check_drop``: one line). With
            a token budget (``token_budget``, or the selection's) it may be empty: only the budget is applied.
        out: the output folder (not needed with ``dry_run``); must not exist unless ``overwrite``.
        config: a :class:`~encslim.prune.config.PruneConfig` (or a dict of its fields; default: its
            defaults): ``verify``, ``verify_method`` (``"full"``: masked-full vs pruned logits;
            ``"module-local"``: kept tensors byte-equal, each sliced/folded module on random inputs,
            no model built; ``"auto"``: full when both models fit in memory), ``num_samples``,
            ``streaming`` (default: when the model does not fit in memory), ``max_shard_size``,
            ``dry_run`` (only build and describe the plan), ``overwrite``, ``token_budget``/``token_method``
            (the budget the output's config.json carries; default: the selection's ``token_budget``, else the
            source's; budget 1: none). A family that takes no budget is refused before anything is written.
        data: benchmark file(s) for verification samples (default: synthetic inputs).
        selection: how ``drop`` was chosen (policy, ranking path...), recorded in the manifest.
        **overrides: fields of ``config`` to change (``verify=False``, ``streaming=True``, ...).

    Returns:
        the manifest dict (``dry_run``: ``{"dry_run": True, "plan": ..., "summary": ...}``); with a budget in
        play, ``token_budget``: ``{"method", "budget", "from", "source_budget", "image_tokens": {"before",
        "after"}}``.

    Raises:
        PlanError: unknown slot, every slot, keys that do not match the config.
        ModelLoadError: not a model folder, unsupported family, corrupt safetensors.
        ConfigError / OutputExistsError: bad output path.
        VerificationError: an exact plan whose pruned logits (or, module-local, a changed module or a kept
            tensor) differ from the masked model's.
    """
    c = PruneConfig.build(config, **overrides)
    if isinstance(drop, Selection):
        selection, drop = (drop.to_dict() if selection is None else selection), list(drop.drop)
    names = drop.masked_ordered if isinstance(drop, SlotSet) else split_names(drop)
    folder = open_folder(model_dir)
    if not c.dry_run:
        if out is None:
            raise ConfigError("no output folder; pass --out DIR (or --dry-run to only see the plan)")
        check_output_path(out, c.overwrite, inputs=[folder.path])
    parse_size(c.max_shard_size)
    verification_method(c.verify, c.verify_method, True)  # a contradiction fails before any work
    # torch-free when the model may never be built: a dry run, or streaming without full verification
    torch_free = c.dry_run or (c.verify_method != "full" and c.streaming is not False)
    budget = chosen_budget(c, selection)
    _check_budget(folder, budget[0])
    prepared = prepare(folder, names, torch_free=torch_free, budget=budget[0])
    if c.dry_run or out is None:
        return {"dry_run": True, "plan": prepared[2].to_dict(), "summary": prepared[4]}
    return _execute(prepared, out, c, data, (selection, budget))


def _execute(prepared: Prepared, out: PathArg, c: PruneConfig, data: DataArg | None,
             chosen: tuple[Mapping[str, Any] | None, tuple[TokenBudget | None, str]]) -> dict[str, Any]:
    """Write the pruned model into ``out``: choose the executor and the verification, run both, write the manifest."""
    adapter, _, plan, folder, summary = prepared
    model_dir, checkpoint = folder.path, _weights(folder)
    fits = _fits_in_memory(checkpoint)
    streaming = (not fits) if c.streaming is None else c.streaming
    method, reason = verification_method(c.verify, c.verify_method, fits)
    torch_free = not isinstance(adapter, Adapter)  # the plan came from config.json alone
    if torch_free and (method == "full" or not streaming):  # the model is built after all: the full structure check
        torch_free = False
        _check_structure(folder, checkpoint.shapes(), f"{model_dir}")
    with atomic_output_dir(out, overwrite=c.overwrite, inputs=[model_dir]) as tmp:
        logger.info("pruning %s from %s (%s executor)", ", ".join(plan.drop), model_dir,
                    "streaming" if streaming else "in-memory")
        result = execute(plan, folder, tmp, streaming, c.max_shard_size)
        _check_output(tmp, torch_free, result["config"])
        verification = _verify(method, reason, checkpoint, tmp, plan, data, c.num_samples, source=folder)
        selection, (budget, where) = chosen
        record = _budget_record(folder, tmp, budget, where)
        manifest = write_manifest(
            tmp, StageRecord("prune", removed=plan.drop, kept=plan.kept, plan=plan.to_dict(), ranking=selection,
                             verification=verification), source=model_dir,
            extra={"summary": summary, **({BUDGET_KEY: record} if record is not None else {}), "executor": "streaming" if streaming else "in-memory", "io": result["io"],
                   "left_out": result["left_out"], **{k: result[k] for k in ("legacy_keys",) if k in result}},
            source_hashes=result["source"], file_hashes=result["written"],
        )
    manifest["output"] = str(Path(out).resolve())
    return manifest
