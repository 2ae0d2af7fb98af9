"""What every output of a run must have been made from, and whether what is on disk is that: the one answer to
"is this output current for these settings and these inputs?", asked by the stage jobs (skip or compute), the CLI's
plan (which jobs to run) and `pixelwizard status` alike.

The provenance record of an output names its stage and prompt, the prompt's text and seed where they matter, its
source file where it has one (kind, content digest, the clip taken), the stage's settings (the stage table's
`settings`, as the prompt's clip runs them), the content identity of the checkpoints it loads and the digests of
the outputs it reads. Those digests are computed the same way, so the expected digest of every output follows
from the run snapshot alone, without reading anything; an output is current when it is intact and carries the
expected digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pixelwizard.io.latent_store import StoreError, verify_store
from pixelwizard.io.sidecar import SidecarError, verify_sidecar
from pixelwizard.pipeline.events import last_failures
from pixelwizard.pipeline.layout import SUFFIXES, Layout
from pixelwizard.pipeline.parallel import in_parts
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt, text_hash
from pixelwizard.pipeline.snapshot import RunSnapshot, uncond_item
from pixelwizard.pipeline.stages import STAGES, Stage, lineage
from pixelwizard.pipeline.stamp_index import StampIndex
from pixelwizard.sampling.seeds import prompt_seed

DONE, STALE, MISSING, CORRUPT, FAILED, BLOCKED = "done", "stale", "missing", "corrupt", "failed", "blocked"
HELD = "held"  # not made by the run's own choice (--until, --only): status and the report show it so
# What a stage's folder lists of a finished output: its store, or its video's JSON (written last)
_LISTED = {name: SUFFIXES["zarr"] if spec.output == "zarr" else ".json" for name, spec in STAGES.items()}


def stage_seed(prompt: Prompt, preset: Preset, stage: str) -> int:
    """The seed of a prompt's noise at a stage: from its own seed, or the run's, and its id."""
    return prompt_seed(preset.seed if prompt.seed is None else prompt.seed, prompt.id, stage)


def provenance_digest(record: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `record` (sorted keys, no whitespace); 1 and 1.0 differ."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class OutputState(NamedTuple):  # a tuple: a new run's plan sends half a million of them between processes
    stage: str
    id: str
    state: str  # done, stale, missing, corrupt, failed, blocked (or held, as status shows it)
    reasons: tuple[str, ...] = ()  # what changed (stale), what is damaged (corrupt), the error (failed), the input

    @property
    def done(self) -> bool:
        return self.state == DONE


class Provenance:
    """The expected provenance of a run's outputs and their states on disk (each computed once per instance)."""

    def __init__(self, snapshot: RunSnapshot, layout: Layout, events: list[dict[str, Any]] = (),
                 base: Provenance | None = None, *, renew: bool = False):
        """`events`: the run's event log (its failures); `base`: the same run with other decode settings, whose
        outputs upstream of the decode (the same records, the same inputs) are judged there once; `renew`: the
        caller runs stages in OUT (holding its lock), so an intact copy's stamps are renewed as they are checked;
        otherwise (status, report, dry runs) nothing in OUT is written."""
        self.snapshot = snapshot
        self.layout = layout
        self.base = base
        self.renew_in = layout.out if renew else None
        self._shared: dict[str, bool] = {}
        self._failed: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (stage, id) -> digest -> last failure
        for (stage, item_id, digest), event in last_failures(list(events)).items():
            self._failed.setdefault((stage, item_id), {})[digest] = event
        self._items = {s: {i.id: i for i in snapshot.items(s)} for s in STAGES}
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._digests: dict[str, dict[str, str]] = {s: {} for s in STAGES}  # stage -> id -> digest
        self._complete: set[str] = set()  # the stages with every item's digest computed
        self._tags: dict[str, str | None] = {}
        self._canonical: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # stage -> its records' JSON's constants
        self._text_hashes: dict[str, str] = {}
        self._uncond_ids: dict[str, str] = {}
        self._states: dict[str, dict[str, OutputState]] = {s: {} for s in STAGES}  # stage -> id -> state
        self._recorded: dict[tuple[str, str], dict[str, Any]] = {}
        self._folders: dict[str, tuple[set[str], StampIndex]] = {}  # stage -> its folder's names, its stamp index

    def item(self, stage: str, item_id: str) -> Prompt:
        """An item of the stage, or a prompt that --only holds back from it."""
        return self._items[stage].get(item_id) or self.snapshot.prompt(item_id)

    def tag(self, stage: str) -> str | None:
        if stage not in self._tags:
            tag = STAGES[stage].tag
            self._tags[stage] = tag(self.snapshot.preset) if tag else None
        return self._tags[stage]

    def output(self, stage: str, item_id: str) -> Path:
        return self.layout.output(stage, item_id, self.tag(stage))

    def spec(self, stage: str, item_id: str) -> Stage:
        """The stage as it makes this item's output (its recipe for the item's source)."""
        return STAGES[stage].recipe(self.item(stage, item_id).source)

    def inputs(self, stage: str, item_id: str) -> dict[str, str]:
        """upstream stage -> the id of the output of it that `stage` reads for `item_id`."""
        item = self.item(stage, item_id)
        spec = STAGES[stage].recipe(item.source)
        return {up: self._input_id(spec, up, item) for up in spec.reads}

    def _input_id(self, spec: Stage, upstream: str, item: Prompt) -> str:
        if upstream != "uncond":
            return item.id
        text = spec.uncond_text(item, self.snapshot.preset)
        if text not in self._uncond_ids:
            self._uncond_ids[text] = uncond_item(text).id
        return self._uncond_ids[text]

    def reads_text(self, stage: str, item_id: str) -> bool:
        """Whether the output depends on the prompt's text (an anchor read from a file does not)."""
        return stage in ("text", "uncond") or any(up in ("text", "uncond") or "text" in self.record(up, up_id)
                                                  for up, up_id in self.inputs(stage, item_id).items())

    def record(self, stage: str, item_id: str) -> dict[str, Any]:
        """The provenance record the output of `stage` for `item_id` must carry."""
        key = (stage, item_id)
        if key not in self._records:
            spec, item = self.spec(stage, item_id), self.item(stage, item_id)
            preset = self.snapshot.preset_for(item)
            record: dict[str, Any] = {"stage": stage, "id": item_id}
            if self.reads_text(stage, item_id):
                record["text"] = text_hash(item.text)
            if stage != "text" and item.id in self.snapshot.sources:
                record["source"] = self.snapshot.sources[item.id]
            if spec.seeded:
                record["seed"] = stage_seed(item, preset, stage)
            record["settings"] = {name: getattr(preset, name) for name in spec.settings}
            record["checkpoints"] = {role: self.snapshot.identities[role] for role in spec.checkpoints}
            record["inputs"] = {up: self.digest(up, up_id) for up, up_id in self.inputs(stage, item_id).items()}
            self._records[key] = record
        return self._records[key]

    def digest(self, stage: str, item_id: str) -> str:
        """provenance_digest(self.record(stage, item_id)), computed once."""
        digest = self._digests[stage].get(item_id)
        if digest is None:
            self._compute_digests(stage, [self.item(stage, item_id)])
            digest = self._digests[stage][item_id]
        return digest

    def digests(self, stage: str) -> dict[str, str]:
        """id -> digest of every item of the stage, in one pass (a marker names its shard by them)."""
        if stage not in self._complete:
            self._compute_digests(stage, self.snapshot.items(stage))
            self._complete.add(stage)
        return self._digests[stage]

    def compute_digests(self, stages: Iterable[str], processes: int | None = None) -> None:
        """Every item's digest of these stages and those upstream of them, now, the prompts cut in parts over
        `processes` cores (parallel.in_parts): a plan names each job's marker by them, half a million at 100,000
        prompts."""
        order = [s for s in STAGES if s in {up for stage in stages for up in lineage(stage)}]  # upstream first
        ids = [p.id for p in self.snapshot.prompts]

        def work(part: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
            chosen, found = set(part) if len(part) < len(ids) else None, {}
            for stage in order:
                items = self.snapshot.in_part(stage, self.snapshot.items(stage), chosen)
                self._compute_digests(stage, items)
                found[stage] = [(item.id, self._digests[stage][item.id]) for item in items]
            return found

        for found in in_parts(work, ids, processes):
            for stage, pairs in found.items():
                self._digests[stage].update(pairs)
        self._complete.update(order)

    def _compute_digests(self, stage: str, items: list[Prompt]) -> None:
        """The digests of these items' outputs. An output made from a text has its record's canonical JSON written
        out directly from parts that are the same for every output of the stage: a run of 100,000 prompts has half a
        million outputs, and building each record to serialize it was most of what `status` and the plan cost."""
        known = self._digests[stage]
        items = [item for item in items if item.id not in known]
        if self._from_base(stage):
            known.update({item.id: self.base.digest(stage, item.id) for item in items})
            return
        head, tail, reads = self._canonical_parts(stage)
        spec, preset, hashes = STAGES[stage], self.snapshot.preset, self._text_hashes
        for item in items:
            if item.source != "text":  # its own recipe and source facts
                known[item.id] = provenance_digest(self.record(stage, item.id))
                continue
            inputs = ",".join([f'"{up}":"{self.digest(up, self._input_id(spec, up, item))}"' for up in reads])
            seed = f',"seed":{stage_seed(item, preset, stage)}' if spec.seeded else ""
            hashed = hashes.get(item.text) or hashes.setdefault(item.text, text_hash(item.text))
            canonical = f'{head}"{item.id}","inputs":{{{inputs}}}{seed}{tail}"{hashed}"}}'  # ids need no escapes
            known[item.id] = hashlib.sha256(canonical.encode()).hexdigest()

    def _from_base(self, stage: str) -> bool:
        """Whether the outputs of `stage` are the base run's: the same items, records and inputs."""
        if stage not in self._shared:
            self._shared[stage] = self.base is not None and all(self._from_base(up) for up in STAGES[stage].reads) \
                and self._canonical_parts(stage) == self.base._canonical_parts(stage) \
                and self.snapshot.items(stage) == self.base.snapshot.items(stage) \
                and self.snapshot.sources == self.base.snapshot.sources
        return self._shared[stage]

    def _canonical_parts(self, stage: str) -> tuple[str, str, tuple[str, ...]]:
        """The canonical JSON of a stage's records around the parts that differ per output (keys sorted:
        checkpoints, id, inputs, seed, settings, stage, text), and the inputs in that order."""
        if stage in self._canonical:
            return self._canonical[stage]
        spec, preset = STAGES[stage], self.snapshot.preset
        dumps = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
        # A role the run does not hash (the LR DiT of a batch of videos) has no identity: no output made from a text
        # needs it then, and the parts are still compared with a re-decode's (_from_base).
        checkpoints = json.dumps({role: self.snapshot.identities.get(role) for role in spec.checkpoints}, **dumps)
        settings = json.dumps({name: getattr(preset, name) for name in spec.settings}, **dumps)
        self._canonical[stage] = (f'{{"checkpoints":{checkpoints},"id":',
                                  f',"settings":{settings},"stage":{json.dumps(stage, **dumps)},"text":',
                                  tuple(sorted(spec.reads)))
        return self._canonical[stage]

    def attrs(self, stage: str, item_id: str) -> dict[str, Any]:
        """What an output is written with: its provenance record and that record's digest."""
        return {"provenance": self.record(stage, item_id), "digest": self.digest(stage, item_id)}

    def load(self, stages: Iterable[str]) -> None:
        """Read the listings and stamp indexes of these stages' folders now (before the judging is split over
        processes, which then share them instead of each reading them again)."""
        for stage in stages:
            if not self._from_base(stage):
                self._folder(stage)

    def _folder(self, stage: str) -> tuple[set[str], StampIndex]:
        """The names in the stage's folder (one listing instead of a stat per missing output) and its stamp index."""
        found = self._folders.get(stage)
        if found is None:
            tag = self.tag(stage)
            try:
                names = set(os.listdir(self.layout.folder(stage, tag)))
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            found = self._folders[stage] = (names, StampIndex(self.layout, stage, tag))
        return found

    def _on_disk(self, stage: str, item_id: str) -> bool:
        """Whether the stage's folder lists the output (its store, or its video's JSON, written last)."""
        return item_id + _LISTED[stage] in self._folder(stage)[0]

    def read_attrs(self, stage: str, item_id: str, full: bool = False) -> dict[str, Any]:
        """The attributes of the intact output on disk; raises FileNotFoundError, StoreError or SidecarError. From
        the stamp index while every file of the output is unchanged (its digest, files and the index entry that
        holds what else its job recorded; no provenance record), else (and with `full`) read and checked. The caller
        found it listed (_on_disk)."""
        if not full and (indexed := self._folder(stage)[1].lookup(item_id)) is not None:
            return indexed
        tag = self.tag(stage)
        if STAGES[stage].output == "zarr":
            return verify_store(self.output(stage, item_id), self.renew_in)
        return verify_sidecar(self.layout.sidecar(stage, item_id, tag), self.renew_in)

    def recorded(self, stage: str, item_id: str) -> dict[str, Any] | None:
        """The attributes of the output on disk that its state was judged by, with what its job's index entry adds
        (seconds, time, metrics); None: missing, corrupt, failed."""
        if self._from_base(stage):
            return self.base.recorded(stage, item_id)
        self.state(stage, item_id)
        attrs = self._recorded.get((stage, item_id))
        if attrs is not None and "entry" in attrs:
            index = self._folder(stage)[1]
            attrs = self._recorded[(stage, item_id)] = {**index.extras(item_id, attrs.pop("entry")), **attrs}
        return attrs

    def state(self, stage: str, item_id: str) -> OutputState:
        state = self._states[stage].get(item_id)
        if state is None:
            state = self._states[stage][item_id] = self.base.state(stage, item_id) if self._from_base(stage) \
                else self._state(stage, item_id)
        return state

    def _state(self, stage: str, item_id: str) -> OutputState:
        if not self._on_disk(stage, item_id):  # most outputs of a new run: no exception raised and caught each
            return self._not_done(stage, item_id, MISSING)
        try:
            attrs = self.read_attrs(stage, item_id)
            expected = self.digest(stage, item_id)
            if attrs.get("digest") != expected and "provenance" not in attrs:  # the index has no record: read it
                attrs = self.read_attrs(stage, item_id, full=True)
        except FileNotFoundError:
            return self._not_done(stage, item_id, MISSING)
        except (StoreError, SidecarError) as err:
            return self._not_done(stage, item_id, CORRUPT, (str(err),))
        self._recorded[(stage, item_id)] = attrs
        if attrs.get("digest") == expected:
            return OutputState(stage, item_id, DONE)
        return self._not_done(stage, item_id, STALE, self.changes(stage, item_id, attrs.get("provenance") or {}))

    def _not_done(self, stage: str, item_id: str, state: str, reasons: tuple[str, ...] = ()) -> OutputState:
        """A failure recorded for exactly this output, or an input that is not there yet, says more."""
        failures = self._failed.get((stage, item_id))  # most outputs never failed: no digest to compute for them
        failure = failures.get(self.digest(stage, item_id)) if failures else None
        if failure is not None:
            return OutputState(stage, item_id, FAILED, (failure.get("error", "failed"),))
        if state == MISSING:
            for up, up_id in self.inputs(stage, item_id).items():
                upstream = self.state(up, up_id)
                if not upstream.done:
                    return OutputState(stage, item_id, BLOCKED, (f"{up} {upstream.state}",))
        return OutputState(stage, item_id, state, reasons)

    def changes(self, stage: str, item_id: str, recorded: Mapping[str, Any]) -> tuple[str, ...]:
        """What differs between the provenance an output carries and the one it should carry, in words."""
        expected = self.record(stage, item_id)
        reasons = []
        if recorded.get("text") != expected.get("text"):
            reasons.append("prompt text changed")
        reasons += source_changes(recorded.get("source") or {}, expected.get("source") or {})
        if recorded.get("seed") != expected.get("seed"):
            reasons.append("seed changed")  # the run's or the prompt's own: each prompt's stage seed differs
        old_settings = recorded.get("settings") or {}
        for name, value in expected["settings"].items():
            if old_settings.get(name) != value:
                reasons.append(f"{name} {_short(old_settings.get(name))} -> {_short(value)}")
        for role, identity in expected["checkpoints"].items():
            if (recorded.get("checkpoints") or {}).get(role) != identity:
                reasons.append(f"{role} checkpoint changed")
        recorded_inputs = recorded.get("inputs") or {}
        for up, digest in expected["inputs"].items():
            if up not in recorded_inputs:
                reasons.append(f"now reads {up}")
            elif recorded_inputs[up] != digest:
                upstream = self.state(up, self.inputs(stage, item_id)[up])
                own = [r for r in upstream.reasons if not r.startswith("its ")]  # one level: its own changes
                why = f" ({'; '.join(own)})" if own else ""
                reasons.append(f"its {up} input is {upstream.state}{why}" if not upstream.done
                               else f"its {up} input was recomputed")
        return tuple(reasons) or ("written by another version of PixelWizard",)


def source_changes(recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What differs between two records' source files, in words."""
    if recorded == expected:
        return []
    kind = expected.get("kind") or recorded.get("kind")
    if recorded.get("kind") != expected.get("kind"):
        return [f"source {recorded.get('kind', 'text')} -> {expected.get('kind', 'text')}"]
    if recorded.get("sha256") != expected.get("sha256"):
        return [f"its {kind}'s content changed"]
    return [f"{kind} {name} {_short(recorded.get(name))} -> {_short(expected.get(name))}"
            for name in sorted(set(recorded) | set(expected)) if recorded.get(name) != expected.get(name)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
