"""LIDC reading sessions (bench/lidc.py): a hand-written XML in the LIDC format is parsed
into readers' marks, and outlines of known shapes fill and measure as they should."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import lidc

SOP_A = "1.2.3.4.100"
SOP_B = "1.2.3.4.101"


def _edge_maps(points: list[tuple[int, int]]) -> str:
    return "".join(
        f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points
    )


def _roi(sop: str, z: float, points: list[tuple[int, int]], inclusion: str = "TRUE") -> str:
    return (
        f"<roi><imageZposition>{z:.6f} </imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
        f"<inclusion>{inclusion}</inclusion>{_edge_maps(points)}</roi>"
    )


# A diamond of radius 3 around column 10, row 10: its 12 outline pixels, 8-connected,
# in order; 25 pixels inside and on it.
DIAMOND = [
    (13, 10), (12, 11), (11, 12), (10, 13), (9, 12), (8, 11),
    (7, 10), (8, 9), (9, 8), (10, 7), (11, 8), (12, 9),
]  # fmt: skip
# The outline of the 5 x 5 square with corners (2, 2) and (6, 6), pixel by pixel.
SQUARE = (
    [(x, 2) for x in range(2, 7)]
    + [(6, y) for y in range(3, 7)]
    + [(x, 6) for x in range(5, 1, -1)]
    + [(2, y) for y in range(5, 2, -1)]
)

XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage uid="1.2.3" xmlns="http://www.nih.gov">
<ResponseHeader><SeriesInstanceUid>1.2.3.4</SeriesInstanceUid></ResponseHeader>
<readingSession>
  <annotationVersion>3.12</annotationVersion>
  <servicingRadiologistID>111</servicingRadiologistID>
  <unblindedReadNodule>
    <noduleID>Nodule 001</noduleID>
    <characteristics><subtlety>5</subtlety><malignancy>4</malignancy></characteristics>
    {_roi(SOP_A, -10.0, DIAMOND)}
    {_roi(SOP_B, -7.5, SQUARE)}
  </unblindedReadNodule>
  <unblindedReadNodule>
    <noduleID>Nodule 002</noduleID>
    {_roi(SOP_B, -7.5, [(40, 41)])}
  </unblindedReadNodule>
  <nonNodule>
    <nonNoduleID>Non-nodule 001</nonNoduleID>
    <imageZposition>-10.000000 </imageZposition>
    <imageSOP_UID>{SOP_A}</imageSOP_UID>
    <locus><xCoord>30</xCoord><yCoord>20</yCoord></locus>
  </nonNodule>
</readingSession>
<readingSession>
  <servicingRadiologistID>222</servicingRadiologistID>
  <unblindedReadNodule>
    <noduleID>IL057_1</noduleID>
    {_roi(SOP_A, -10.0, [(7, 7), (13, 7), (13, 13), (7, 13)])}
    {_roi(SOP_A, -10.0, [(9, 9), (11, 9), (11, 11), (9, 11)], inclusion="FALSE")}
  </unblindedReadNodule>
</readingSession>
</LidcReadMessage>
"""


def test_reading_sessions_are_parsed_with_the_lidc_namespace() -> None:
    # Given an XML in the LIDC format, with its default namespace
    # When it is parsed
    sessions = lidc.parse_reading_sessions(XML)

    # Then each reader's nodules, outlines, points and non-nodules come out in order
    assert [s.reader for s in sessions] == ["111", "222"]
    first = sessions[0]
    large, small = first.nodules
    assert large.nodule_id == "Nodule 001"
    assert large.characteristics == {"subtlety": 5, "malignancy": 4}
    assert [roi.sop_uid for roi in large.rois] == [SOP_A, SOP_B]
    assert [roi.z_mm for roi in large.rois] == [-10.0, -7.5]
    assert large.rois[0].points == tuple(DIAMOND)
    assert not large.is_point
    assert small.is_point and small.rois[0].points == ((40, 41),)
    (mark,) = first.non_nodules
    assert (mark.non_nodule_id, mark.sop_uid, mark.z_mm, mark.point) == (
        "Non-nodule 001",
        SOP_A,
        -10.0,
        (30, 20),
    )
    assert [roi.inclusion for roi in sessions[1].nodules[0].rois] == [True, False]


def test_a_file_without_the_namespace_parses_the_same() -> None:
    bare = XML.replace(' xmlns="http://www.nih.gov"', "")
    assert lidc.parse_reading_sessions(bare) == lidc.parse_reading_sessions(XML)


def test_a_diamond_outline_fills_inclusive_of_its_own_pixels() -> None:
    # Given the outline pixels of a diamond of radius 3 (x = column, y = row)
    # When it is filled
    mask = lidc.fill_outline(DIAMOND, (20, 20))

    # Then every pixel within the diamond, outline included, is set, and no other
    rows, columns = np.mgrid[0:20, 0:20]
    expected = np.abs(rows - 10) + np.abs(columns - 10) <= 3
    assert mask.sum() == 25
    assert np.array_equal(mask, expected)
    # And its long axis runs tip to tip: 6 pixels between centres plus one pixel
    assert lidc.long_axis_mm(mask, 0.5, 0.5) == pytest.approx(3.5)


def test_a_square_fills_the_same_from_its_outline_or_its_corners() -> None:
    full = lidc.fill_outline(SQUARE, (10, 10))
    corners = lidc.fill_outline([(2, 2), (6, 2), (6, 6), (2, 6)], (10, 10))

    expected = np.zeros((10, 10), dtype=bool)
    expected[2:7, 2:7] = True
    assert np.array_equal(full, expected)
    assert np.array_equal(corners, expected)
    # The longest diameter is the diagonal: 4 * sqrt(2) pixels between centres, plus one
    assert lidc.long_axis_mm(full, 0.7, 0.7) == pytest.approx(0.7 * (4 * math.sqrt(2) + 1))
    # Rows and columns are not swapped: a wide rectangle is long along the columns
    wide = lidc.fill_outline([(0, 0), (9, 0), (9, 1), (0, 1)], (4, 12))
    assert wide.sum() == 20 and wide[:2, :10].all()
    assert lidc.long_axis_mm(wide, 2.0, 1.0) == pytest.approx(math.hypot(9, 2) + 1)


def test_reader_mask_places_slices_by_sop_uid_and_cuts_exclusions() -> None:
    sessions = lidc.parse_reading_sessions(XML)
    slice_of = {SOP_A: 3, SOP_B: 1}

    first = lidc.reader_mask(sessions[0].nodules[0], slice_of, (5, 20, 20))
    second = lidc.reader_mask(sessions[1].nodules[0], slice_of, (5, 20, 20))

    assert [int(first[k].sum()) for k in range(5)] == [0, 25, 0, 25, 0]
    # The longest slice is the diamond's (7 pixels tip to tip) beside the square's diagonal
    assert lidc.volume_long_axis_mm(first, 1.0, 1.0) == (pytest.approx(7.0), 3)
    # A 7 x 7 square with the 3 x 3 exclusion in its middle
    assert int(second[3].sum()) == 49 - 9
    assert not second[3, 10, 10]
    # The diamond lies inside the square less its hole for 25 - 9 pixels
    assert lidc.dice(first, second) == pytest.approx(2 * (25 - 9) / (50 + 40))


def test_marks_group_by_proximity_one_per_reader() -> None:
    # Given two readers outlining the same nodule a few mm apart, a third reader's
    # point 30 mm off, and one reader marking two nodules next to each other
    marks = [
        lidc.Mark(1, (0.0, 0.0, 0.0), 15.0),
        lidc.Mark(2, (3.0, 0.0, 0.0), 14.0),
        lidc.Mark(3, (30.0, 0.0, 0.0), 0.0),
        lidc.Mark(3, (1.0, 1.0, 0.0), 0.0),
        lidc.Mark(1, (6.0, 0.0, 0.0), 0.0),
    ]

    groups = lidc.group_marks(marks, 10.0)

    # Then the close marks of different readers form one nodule; a reader's second
    # mark there and the far point stand alone
    assert sorted(groups) == [[0, 1, 3], [2], [4]]


def test_consensus_keeps_voxels_half_the_readers_marked() -> None:
    a = np.array([1, 1, 1, 0], dtype=bool)
    b = np.array([1, 1, 0, 0], dtype=bool)
    c = np.array([1, 0, 0, 0], dtype=bool)
    d = np.array([0, 0, 0, 1], dtype=bool)
    assert lidc.consensus_mask([a, b, c, d]).tolist() == [True, True, False, False]
    assert lidc.dice(a, b) == pytest.approx(0.8)
