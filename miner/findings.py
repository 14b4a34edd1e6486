"""Finding names: the ChestX-ray14 class list, the spellings its files use, and one vocabulary across archives.

`CHESTXRAY14` is the default class list, in the order of Wang et al. (CVPR 2017, Table 1) and of
`Data_Entry_2017.csv`'s documentation; a model's class index is its position here unless the archive
or checkpoint declares its own list.

`VOCABULARY` is every canonical finding (ChestX-ray14's 14, then `OTHER_FINDINGS`); `ARCHIVE_FINDINGS` maps each
archive kind's own names to it (VinDr-CXR "Pleural effusion" and CheXpert "Pleural Effusion" -> Effusion, ...), so
a model trained on one archive mines and is scored on another where their findings meet. docs/archives.md lists
the map as a table.
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
    """The class-list spelling of a finding name as written in a release file or typed by a user.

    ChestX-ray14's aliases (``Infiltrate``), then any vocabulary finding or archive name in any letter case
    (``pleural effusion`` -> ``Effusion``); other names are returned stripped, unchanged.
    """
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    return _LOOKUP.get(name.lower(), name)


# ----------------------------------------------------------------------------------------------
# one vocabulary across archives

#: findings of the other archives that ChestX-ray14 does not name, in canonical spelling. "Nodule/Mass" is its own
#: finding (VinDr-CXR and Google's relabels do not tell a nodule from a mass); "Lung Opacity" is CheXpert's and
#: VinDr-CXR's broad opacity class (Google's "Airspace opacity").
OTHER_FINDINGS: tuple[str, ...] = (
    "Nodule/Mass",
    "Lung Opacity",
    "Lung Lesion",
    "Enlarged Cardiomediastinum",
    "Aortic Enlargement",
    "Calcification",
    "ILD",
    "Other Lesion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: every canonical finding: the ChestX-ray14 classes first, in their order, then `OTHER_FINDINGS`
VOCABULARY: tuple[str, ...] = CHESTXRAY14 + OTHER_FINDINGS

#: per archive kind, how its files name findings -> the canonical finding (None: the archive's "no finding"
#: marker). Names not listed are an archive's own terms outside the vocabulary (PadChest's radiological terms):
#: kept on the records verbatim, left out of the archive's class list.
ARCHIVE_FINDINGS: dict[str, dict[str, str | None]] = {
    # ChestX-ray14 (NIH): Data_Entry_2017.csv and BBox_List_2017.csv
    "release": {**{name: name for name in CHESTXRAY14}, **ALIASES, NO_FINDING: None},
    # VinDr-CXR train.csv class_name (class_id 0..13, 14 = "No finding")
    "vindr": {
        "Aortic enlargement": "Aortic Enlargement",
        "Atelectasis": "Atelectasis",
        "Calcification": "Calcification",
        "Cardiomegaly": "Cardiomegaly",
        "Consolidation": "Consolidation",
        "ILD": "ILD",
        "Infiltration": "Infiltration",
        "Lung Opacity": "Lung Opacity",
        "Nodule/Mass": "Nodule/Mass",
        "Other lesion": "Other Lesion",
        "Pleural effusion": "Effusion",
        "Pleural thickening": "Pleural_Thickening",
        "Pneumothorax": "Pneumothorax",
        "Pulmonary fibrosis": "Fibrosis",
        "No finding": None,
    },
    # RSNA Pneumonia Detection: Target = 1 rows carry one box each of "Lung Opacity" suggestive of pneumonia
    "rsna": {"Target": "Pneumonia"},
    # SIIM-ACR Pneumothorax: every non-empty EncodedPixels mask is a pneumothorax
    "siim": {"EncodedPixels": "Pneumothorax"},
    # CheXpert train.csv / valid.csv label columns
    "chexpert": {
        "No Finding": None,
        "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
        "Cardiomegaly": "Cardiomegaly",
        "Lung Opacity": "Lung Opacity",
        "Lung Lesion": "Lung Lesion",
        "Edema": "Edema",
        "Consolidation": "Consolidation",
        "Pneumonia": "Pneumonia",
        "Atelectasis": "Atelectasis",
        "Pneumothorax": "Pneumothorax",
        "Pleural Effusion": "Effusion",
        "Pleural Other": "Pleural Other",
        "Fracture": "Fracture",
        "Support Devices": "Support Devices",
    },
    # Google's expert relabels of ChestX-ray14 images (Majkowska et al., Radiology 2019)
    "google": {
        "Fracture": "Fracture",
        "Pneumothorax": "Pneumothorax",
        "Airspace opacity": "Lung Opacity",
        "Nodule or mass": "Nodule/Mass",
    },
    # PadChest `Labels` terms (lower case, as the file writes them). Only terms that name a vocabulary finding
    # (or one of its sub-types) are mapped; patterns that several findings share ("alveolar pattern",
    # "interstitial pattern") and findings of other organs keep their own term.
    "padchest": {
        "normal": None,
        "atelectasis": "Atelectasis", "laminar atelectasis": "Atelectasis", "lobar atelectasis": "Atelectasis",
        "segmental atelectasis": "Atelectasis", "atelectasis basal": "Atelectasis",
        "total atelectasis": "Atelectasis", "round atelectasis": "Atelectasis",
        "cardiomegaly": "Cardiomegaly",
        "pleural effusion": "Effusion", "loculated pleural effusion": "Effusion",
        "loculated fissural effusion": "Effusion",
        "infiltrates": "Infiltration",
        "pulmonary mass": "Mass", "mass": "Mass",
        "nodule": "Nodule", "multiple nodules": "Nodule",
        "pneumonia": "Pneumonia", "atypical pneumonia": "Pneumonia",
        "pneumothorax": "Pneumothorax", "hydropneumothorax": "Pneumothorax",
        "consolidation": "Consolidation",
        "pulmonary edema": "Edema",
        "emphysema": "Emphysema",
        "pulmonary fibrosis": "Fibrosis",
        "pleural thickening": "Pleural_Thickening", "apical pleural thickening": "Pleural_Thickening",
        "calcified pleural thickening": "Pleural_Thickening",
        "hiatal hernia": "Hernia",
        "aortic button enlargement": "Aortic Enlargement", "aortic aneurysm": "Aortic Enlargement",
        "calcified densities": "Calcification",
        "fracture": "Fracture", "rib fracture": "Fracture", "callus rib fracture": "Fracture",
        "clavicle fracture": "Fracture", "humeral fracture": "Fracture", "vertebral fracture": "Fracture",
    },
}


def archive_finding(kind: str, name: str) -> str | None:
    """The canonical finding of `name` as archive `kind` writes it (None for its "no finding" marker).

    A name the archive's map does not list is returned as it is (stripped): an archive's own term outside the
    vocabulary.
    """
    name = name.strip()
    table = ARCHIVE_FINDINGS[kind]
    if name in table:
        return table[name]
    return name


def archive_classes(kind: str) -> tuple[str, ...]:
    """The canonical findings archive `kind` can name, in `VOCABULARY` order."""
    named = {v for v in ARCHIVE_FINDINGS[kind].values() if v is not None}
    return tuple(f for f in VOCABULARY if f in named)


def _lookup() -> dict[str, str]:
    table = {k.lower(): v for k, v in ALIASES.items()}
    for mapping in ARCHIVE_FINDINGS.values():
        for name, finding in mapping.items():
            if finding is not None and name not in ("Target", "EncodedPixels"):
                table.setdefault(name.lower(), finding)
    table.update({f.lower(): f for f in VOCABULARY})
    return table


_LOOKUP: dict[str, str] = _lookup()
