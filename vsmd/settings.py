"""Which option of a module or DataModule may change, and when: the one place that says so.

Every module class declares ``SETTINGS = SettingsPolicy(...)``, every DataModule class ``DATA_SETTINGS``, naming
each ``__init__`` option in exactly one role (tests/test_settings.py checks that none is missing):

- ``data``: defines the data (DataModules). A checkpoint refuses a config whose data differ.
- ``loading``: how the data are read and batched (folders, batch sizes, workers; DataModules): may change.
- ``weights``: defines what the weights mean (the process, the network's shape). Taken from the checkpoint: a
  different value is an error for ``fit --ckpt_path`` and a printed note for validate/test/predict.
- ``resume``: training settings that may change when a fit resumes, take effect, and are reported.
- ``start``: settings of how a fit starts (the data-informed start of A, the EMA's warmup): may change on resume,
  not reported.
- ``evaluation``: sampling and scoring settings, taken from the config and command line by every subcommand.

``vsmd.cli`` reconciles a checkpoint with the config from these declarations, and ``VSMDModule`` reports the
``resume`` settings that changed.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

ROLES = ("data", "loading", "weights", "resume", "start", "evaluation")


@dataclass(frozen=True)
class SettingsPolicy:
    """The option names of one class, per role (tuples, in the order they are reported)."""

    data: tuple[str, ...] = ()
    loading: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    evaluation: tuple[str, ...] = ()

    def extend(self, **more: tuple[str, ...]) -> SettingsPolicy:
        """This policy with a subclass's own options added to the given roles (after the inherited ones)."""
        return replace(self, **{role: getattr(self, role) + tuple(names) for role, names in more.items()})

    def role(self, name: str) -> str | None:
        """The role of option ``name`` (None for a name the class does not declare)."""
        return next((r for r in ROLES if name in getattr(self, r)), None)

    def names(self) -> list[str]:
        return [n for f in fields(self) for n in getattr(self, f.name)]

    def evaluation_notes(self, trained: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
        """One line per evaluation setting whose ``given`` value differs from the ``trained`` one (the checkpoint's),
        for ``vsmd test`` and ``vsmd.evaluate`` to print, so that numbers are compared knowingly."""
        return [f"vsmd: evaluating with {k}={_shown(given[k])} (the checkpoint was trained with "
                f"{k}={_shown(trained[k])})" for k in self.evaluation
                if k in trained and k in given and not same_value(trained[k], given[k])]

    def from_config(self, subcommand: str | None) -> frozenset[str]:
        """The settings a subcommand takes from the config rather than from a checkpoint: the evaluation settings,
        and for ``fit`` (a resume) the training settings too."""
        keep = set(self.evaluation)
        if subcommand == "fit":
            keep |= set(self.resume) | set(self.start)
        return frozenset(keep)


def same_value(a: Any, b: Any) -> bool:
    """Equal as option values: 1 and 1.0 alike, lists and tuples element by element."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _union(policies: list[SettingsPolicy]) -> SettingsPolicy:
    merged: dict[str, tuple[str, ...]] = {r: () for r in ROLES}
    for p in policies:
        for r in ROLES:
            merged[r] += tuple(n for n in getattr(p, r) if n not in merged[r])
    return SettingsPolicy(**merged)


def resolve(class_path: str | None) -> type | None:
    """The class a config's or checkpoint's ``class_path`` names (None when it cannot be imported)."""
    if not class_path or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # noqa: BLE001 (a class of another package or version: the fallback below applies)
        return None


def policy_for(class_path: str | None, base: type, attribute: str = "SETTINGS") -> SettingsPolicy:
    """The policy ``attribute`` of the class ``class_path`` names; for a class that declares none (or cannot be
    imported), the union of the policies of every subclass of ``base`` that vsmd knows."""
    cls = resolve(class_path)
    policy = getattr(cls, attribute, None) if cls is not None else None
    if isinstance(policy, SettingsPolicy):
        return policy
    known = [getattr(c, attribute) for c in [base, *_all_subclasses(base)]
             if isinstance(getattr(c, attribute, None), SettingsPolicy)]
    return _union(known)
