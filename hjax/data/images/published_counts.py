"""The image counts a fetched dataset is checked against, with where each comes from
(the same table, with sources, is in docs/diversity_shift.md).

Totals are the registry's (``expected_totals``: what DomainBed's papers report). Per-domain
counts are pinned where a source gives them; per-class counts only for VLCS, where DomainBed
ships the file list its VLCS was built from. Everything not pinned is reported, not checked.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

from hjax.data.images.registry import IMAGE_DATASETS


class Published(NamedTuple):
    totals: tuple[int, ...]                             # accepted totals (versions)
    per_domain: Mapping[int, Mapping[str, int]]         # total -> {domain: images}
    per_class: Mapping[str, Mapping[str, int]] | None   # {domain: {class: images}}
    every_class_everywhere: bool                        # each domain holds every class
    source: str
    num_classes: int | None = None                      # checked where the registry has
                                                        # no class list (DomainNet)


def _vlcs(caltech, labelme, sun, voc):
    classes = ("bird", "car", "chair", "dog", "person")
    return {d: dict(zip(classes, n)) for d, n in (("Caltech101", caltech), ("LabelMe", labelme),
                                                  ("SUN09", sun), ("VOC2007", voc))}


_VLCS_PER_CLASS = _vlcs((237, 123, 118, 67, 870), (80, 1209, 88, 42, 1237),
                        (20, 932, 1036, 30, 1264), (330, 699, 428, 420, 1499))

PUBLISHED: dict[str, Published] = {
    "vlcs": Published(
        IMAGE_DATASETS["vlcs"].expected_totals,
        {10_729: {d: sum(c.values()) for d, c in _VLCS_PER_CLASS.items()}},
        _VLCS_PER_CLASS, True,
        "DomainBed's domainbed/misc/vlcs_files.txt (b93c22a), one line per image of VLCS"),
    "pacs": Published(
        IMAGE_DATASETS["pacs"].expected_totals,
        {9_991: {"art_painting": 2_048, "cartoon": 2_344, "photo": 1_670, "sketch": 3_929}},
        None, True, "Li et al., Deeper, Broader and Artier Domain Generalization (ICCV 2017)"),
    "office_home": Published(
        IMAGE_DATASETS["office_home"].expected_totals,
        {15_588: {"Art": 2_427, "Clipart": 4_365, "Product": 4_439, "Real World": 4_357}},
        None, True, "Venkateswara et al., Deep Hashing Network for Unsupervised Domain "
                    "Adaptation (CVPR 2017)"),
    "terra_incognita": Published(
        IMAGE_DATASETS["terra_incognita"].expected_totals,
        {24_788: {"location_100": 4_879, "location_38": 9_767, "location_43": 4_020,
                  "location_46": 6_122}},
        None, False, "24,788 and its per-location counts: github.com/khanrc/miro/issues/9 "
                     "(the version DomainBed, SWAD and MIRO report); 24,330: what DomainBed's "
                     "script gave from the moved source in 2022 (same thread), per location "
                     "unpublished"),
    "domain_net": Published(
        IMAGE_DATASETS["domain_net"].expected_totals,
        {586_575: {"clipart": 48_129, "infograph": 51_605, "painting": 72_266,
                   "quickdraw": 172_500, "real": 172_947, "sketch": 69_128}},
        None, True, "the per-domain counts reported with DomainBed's 586,575 (they sum to it); "
                    "each plus the duplicates DomainBed's list removes from that domain (704, "
                    "1,596, 3,493, 0, 2,380, 1,258) gives DomainNet's own per-domain size",
        IMAGE_DATASETS["domain_net"].num_classes),
}
