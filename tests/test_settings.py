"""The settings policy (vsmd.settings): every option of every module and DataModule class has exactly one role."""

from __future__ import annotations

import inspect

import pytest

from vsmd.datamodules import (GluonTSDataModule, ImageDataModule, SeriesFileDataModule, Toy2DDataModule,
                              TrajectoryDataModule, VectorDataModule)
from vsmd.models import (AGMModule, GenerativeModule, ImageAGM, ImageVSMD, PhaseSpaceModule, TimeSeriesAGM,
                         TimeSeriesVSMD, ToyAGM, ToyVSMD, TrajectoryBridge, VSMDModule)
from vsmd.settings import ROLES, SettingsPolicy, policy_for

MODULES = [GenerativeModule, VSMDModule, ToyVSMD, TimeSeriesVSMD, ImageVSMD, AGMModule, ToyAGM, TimeSeriesAGM, ImageAGM,
           TrajectoryBridge]
DATAMODULES = [Toy2DDataModule, GluonTSDataModule, SeriesFileDataModule, ImageDataModule, TrajectoryDataModule,
               VectorDataModule]


def init_options(cls: type) -> set[str]:
    """The options of ``cls.__init__``, with those its ``**kwargs`` pass on to the base classes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass.__module__.split(".")[0] != "vsmd":
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


def test_every_module_class_is_declared() -> None:
    """A new module class in vsmd.models must be added here (and declare SETTINGS)."""
    def subclasses(c):
        return [s for d in c.__subclasses__() for s in (d, *subclasses(d))]
    known = {c for c in subclasses(PhaseSpaceModule) if c.__module__.startswith("vsmd.")}
    assert known <= set(MODULES)


@pytest.mark.parametrize("cls", MODULES + DATAMODULES, ids=lambda c: c.__name__)
def test_every_option_has_exactly_one_role(cls: type) -> None:
    policy = vars(cls).get("SETTINGS") or vars(cls).get("DATA_SETTINGS")
    assert isinstance(policy, SettingsPolicy), f"{cls.__name__} declares no settings policy of its own"
    declared = policy.names()
    twice = sorted({n for n in declared if declared.count(n) > 1})
    assert not twice, f"{cls.__name__}: options in more than one role: {twice}"
    options = init_options(cls)
    assert not options - set(declared), f"{cls.__name__}: options without a role: {sorted(options - set(declared))}"
    assert not set(declared) - options, f"{cls.__name__}: roles name unknown options: {sorted(set(declared) - options)}"


@pytest.mark.parametrize("cls", MODULES, ids=lambda c: c.__name__)
def test_module_roles(cls: type) -> None:
    """Modules have no data or loading options; DataModules only those two."""
    assert not cls.SETTINGS.data and not cls.SETTINGS.loading


@pytest.mark.parametrize("cls", DATAMODULES, ids=lambda c: c.__name__)
def test_datamodule_roles(cls: type) -> None:
    p = cls.DATA_SETTINGS
    assert all(not getattr(p, r) for r in ROLES if r not in ("data", "loading"))


def test_policy_lookup() -> None:
    assert policy_for("vsmd.models.ToyVSMD", PhaseSpaceModule) is ToyVSMD.SETTINGS
    assert policy_for("vsmd.models.toy.ToyVSMD", PhaseSpaceModule) is ToyVSMD.SETTINGS
    every = policy_for("no.such.Module", PhaseSpaceModule)  # a class vsmd cannot import: what any class declares
    assert set(ToyVSMD.SETTINGS.evaluation) | set(TrajectoryBridge.SETTINGS.evaluation) <= set(every.evaluation)
    assert ToyVSMD.SETTINGS.from_config("test") == frozenset(ToyVSMD.SETTINGS.evaluation)
    assert "lr" in ToyVSMD.SETTINGS.from_config("fit") and "lr" not in ToyVSMD.SETTINGS.from_config("test")
    assert "process" not in ToyVSMD.SETTINGS.from_config("fit")
