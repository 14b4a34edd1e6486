"""Finding names: the ChestX-ray14 class list and the spellings its files use.

`CHESTXRAY14` is the default class list, in the order of Wang et al. (CVPR 2017, Table 1) and of
`Data_Entry_2017.csv`'s documentation; a model's class index is its position here unless the archive
or checkpoint declares its own list.
"""
from __future__ import annotations

CHESTXRAY14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: the eight findings that carry boxes in BBox_List_2017.csv
BOXED_FINDINGS: tuple[str, ...] = CHESTXRAY14[:8]

NO_FINDING = "No Finding"

#: spellings in the release files that differ from the class names
ALIASES: dict[str, str] = {
    "Infiltrate": "Infiltration",
    "Pleural Thickening": "Pleural_Thickening",
}


def canonical(name: str) -> str:
    """The class-list spelling of a finding name as written in a release file."""
    name = name.strip()
    return ALIASES.get(name, name)
