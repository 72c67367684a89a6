"""Data contracts: dataset specs and the table schemas derived from them."""

from schemas.spec import (
    Attribute,
    CategoricalFeature,
    DatasetSpec,
    DenseFeature,
    KeyColumn,
    SpecError,
    Task,
    available_specs,
    load_spec,
    parse_spec,
)

__all__ = [
    "Attribute", "CategoricalFeature", "DatasetSpec", "DenseFeature", "KeyColumn", "SpecError",
    "Task", "available_specs", "load_spec", "parse_spec",
]
