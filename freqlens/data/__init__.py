"""Datasets for backdoor experiments: loaders, attacks and the in-memory splits."""

from freqlens.data.attacks import (
    ATTACKS,
    AddSent,
    Attack,
    BadNets,
    FunctionAttack,
    StyleBkd,
    SynBkd,
    attack_class,
    make_attack,
    poison,
    register_attack,
    remove_trigger,
    unregister_attack,
)
from freqlens.data.hf import load_hf_dataset
from freqlens.data.loaders import load_clean, load_openbackdoor, read_table
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split, cap, check_disjoint

__all__ = [
    "ATTACKS",
    "AddSent",
    "Attack",
    "BadNets",
    "CleanDataset",
    "FunctionAttack",
    "PoisonedDataset",
    "Split",
    "StyleBkd",
    "SynBkd",
    "attack_class",
    "cap",
    "check_disjoint",
    "load_clean",
    "load_hf_dataset",
    "load_openbackdoor",
    "make_attack",
    "poison",
    "read_table",
    "register_attack",
    "remove_trigger",
    "unregister_attack",
]
