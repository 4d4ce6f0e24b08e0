"""DICOM terminology of segments: what a segment is, in codes Slicer and DICOM SEG understand.

A catalogue label carries its meaning as coded concepts (``{"category": {"scheme":
"SCT", "code": "91723000", "meaning": "Anatomical structure"}, "type": {...}}``, plus
optional ``type_modifier``, ``anatomic_region`` and ``anatomic_region_modifier``).
Slicer keeps them on a segment as one tag, ``vtkSegment.GetTerminologyEntryTagName()``,
in its serialised form::

    <context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

where each coded concept is ``scheme^code^meaning`` (``^^`` when absent). Slicer's
Segment Editor shows it, its DICOM SEG export (dcmqi) writes it, and a ``.seg.nrrd``
saves it. :func:`terminology_entry` and :func:`parse_terminology_entry` convert
between the two forms without Slicer; :func:`set_segment_terminology` puts the tag on a
segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Slicer's terminology context of the DICOM codes (loaded by default in Slicer's Terminologies module).
CATEGORY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: The coded concepts of an entry, in the order of Slicer's serialised form.
CONCEPTS = ("category", "type", "type_modifier", "anatomic_region", "anatomic_region_modifier")
_FIELDS = ("scheme", "code", "meaning")
#: Characters that delimit Slicer's form (and its .seg.nrrd tag list): no code may hold them.
_DELIMITERS = ("~", "^", "|")


def _code(concept: Mapping[str, Any] | None, what: str) -> str:
    if not concept:
        return "^^"
    values = []
    for key in _FIELDS:
        value = str(concept.get(key, "") or "")
        if any(d in value for d in _DELIMITERS):
            raise ValueError(
                f"the {what} {key} {value!r} holds one of {' '.join(_DELIMITERS)}, which Slicer cannot store"
            )
        values.append(value)
    if not values[1] or not values[0]:
        raise ValueError(f"the {what} needs a coding scheme and a code, got {dict(concept)}")
    return "^".join(values)


def terminology_entry(terminology: Mapping[str, Any]) -> str:
    """Slicer's serialised terminology entry of a catalogue label's terminology.

    Parameters
    ----------
    terminology : mapping
        ``category`` and ``type`` (required), ``type_modifier``, ``anatomic_region``,
        ``anatomic_region_modifier`` (optional), each ``{"scheme", "code", "meaning"}``.

    Raises
    ------
    ValueError
        When the category or type is missing, a concept has no scheme or code, or a
        value holds a delimiter of Slicer's form.

    Examples
    --------
    >>> entry = terminology_entry({"category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical structure"},
    ...                            "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"}})
    >>> entry.split("~")[1:4]
    ['SCT^91723000^Anatomical structure', 'SCT^59820001^Blood vessel', '^^']
    """
    unknown = sorted(set(terminology) - set(CONCEPTS))
    if unknown:
        raise ValueError(f"unknown terminology keys {unknown}; use {', '.join(CONCEPTS)}")
    for required in ("category", "type"):
        if not terminology.get(required):
            raise ValueError(f"a terminology needs a {required} code ({{'scheme', 'code', 'meaning'}})")
    codes = {key: _code(terminology.get(key), key.replace("_", " ")) for key in CONCEPTS}
    return "~".join(
        [
            CATEGORY_CONTEXT,
            codes["category"],
            codes["type"],
            codes["type_modifier"],
            ANATOMIC_CONTEXT,
            codes["anatomic_region"],
            codes["anatomic_region_modifier"],
        ]
    )


def parse_terminology_entry(text: str) -> dict[str, dict[str, str]]:
    """The coded concepts of a serialised entry (the inverse of :func:`terminology_entry`); absent ones are left out.

    Raises
    ------
    ValueError
        When the text does not have Slicer's seven ``~``-separated fields.
    """
    fields = text.split("~")
    if len(fields) != 7:
        raise ValueError(f"a terminology entry has 7 '~'-separated fields, got {len(fields)}: {text!r}")
    concepts = {}
    for key, field in zip(CONCEPTS, [fields[1], fields[2], fields[3], fields[5], fields[6]]):
        parts = field.split("^")
        if len(parts) != 3:
            raise ValueError(f"the {key} of a terminology entry is scheme^code^meaning, got {field!r}")
        if parts[0] or parts[1]:
            concepts[key] = dict(zip(_FIELDS, parts))
    return concepts


def set_segment_terminology(segmentation_node: Any, segment_id: str, terminology: Mapping[str, Any]) -> str:
    """Put a terminology on a segment of a segmentation node; returns the serialised entry.

    Raises
    ------
    ValueError
        When the segment is not in the node, or the terminology is invalid (nothing is changed then).
    """
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()}")
    entry = terminology_entry(terminology)
    segment.SetTag(segment.GetTerminologyEntryTagName(), entry)
    return entry


def segment_terminology(segmentation_node: Any, segment_id: str) -> str:
    """The serialised terminology entry of a segment (``""`` when it has none)."""
    import vtk

    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()}")
    value = vtk.reference("")
    if not segment.GetTag(segment.GetTerminologyEntryTagName(), value):
        return ""
    return str(value)
