"""What every output of a run must have been made from, and whether what is on disk is that: the one answer to
"is this output current for these settings and these inputs?", asked by the stage jobs (skip or compute), the CLI's
plan (which jobs to run) and `pixelwizard status` alike.

The provenance record of an output names its stage and prompt, the prompt's text and seed where they matter, the
stage's settings (the stage table's `settings`), the content identity of the checkpoints it loads and the digests
of the outputs it reads. Those digests are computed the same way, so the expected digest of every output follows
from the run snapshot alone, without reading anything; an output is current when it is intact and carries the
expected digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwizard.io.latent_store import StoreError, verify_store
from pixelwizard.io.sidecar import SidecarError, verify_sidecar
from pixelwizard.pipeline.events import last_failures
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt, text_hash
from pixelwizard.pipeline.snapshot import RunSnapshot, uncond_item
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.sampling.seeds import prompt_seed

DONE, STALE, MISSING, CORRUPT, FAILED, BLOCKED = "done", "stale", "missing", "corrupt", "failed", "blocked"
HELD = "held"  # not made by the run's own choice (--until, --only): status and the report show it so


def stage_seed(prompt: Prompt, preset: Preset, stage: str) -> int:
    """The seed of a prompt's noise at a stage: from its own seed, or the run's, and its id."""
    return prompt_seed(preset.seed if prompt.seed is None else prompt.seed, prompt.id, stage)


def provenance_digest(record: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `record` (sorted keys, no whitespace); 1 and 1.0 differ."""
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class OutputState:
    stage: str
    id: str
    state: str  # done, stale, missing, corrupt, failed, blocked (or held, as status shows it)
    reasons: tuple[str, ...] = ()  # what changed (stale), what is damaged (corrupt), the error (failed), the input

    @property
    def done(self) -> bool:
        return self.state == DONE


class Provenance:
    """The expected provenance of a run's outputs and their states on disk (each computed once per instance)."""

    def __init__(self, snapshot: RunSnapshot, layout: Layout, events: list[dict[str, Any]] = ()):
        self.snapshot = snapshot
        self.layout = layout
        self.failures = last_failures(list(events))
        self._items = {s: {i.id: i for i in snapshot.items(s)} for s in STAGES}
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        self._digests: dict[tuple[str, str], str] = {}
        self._canonical: dict[str, tuple[str, str]] = {}  # stage -> the constant parts of its records' JSON
        self._text_hashes: dict[str, str] = {}
        self._uncond_ids: dict[str, str] = {}
        self._states: dict[tuple[str, str], OutputState] = {}

    def item(self, stage: str, item_id: str) -> Prompt:
        """An item of the stage, or a prompt that --only holds back from it."""
        return self._items[stage].get(item_id) or self.snapshot.prompt(item_id)

    def tag(self, stage: str) -> str | None:
        tag = STAGES[stage].tag
        return tag(self.snapshot.preset) if tag else None

    def output(self, stage: str, item_id: str) -> Path:
        return self.layout.output(stage, item_id, self.tag(stage))

    def inputs(self, stage: str, item_id: str) -> dict[str, str]:
        """upstream stage -> the id of the output of it that `stage` reads for `item_id`."""
        spec = STAGES[stage]
        return {up: self._uncond_id(spec.uncond_text(self.item(stage, item_id), self.snapshot.preset))
                if up == "uncond" else item_id for up in spec.reads}

    def _uncond_id(self, text: str) -> str:
        if text not in self._uncond_ids:
            self._uncond_ids[text] = uncond_item(text).id
        return self._uncond_ids[text]

    def record(self, stage: str, item_id: str) -> dict[str, Any]:
        """The provenance record the output of `stage` for `item_id` must carry."""
        key = (stage, item_id)
        if key not in self._records:
            spec, item, preset = STAGES[stage], self.item(stage, item_id), self.snapshot.preset
            record: dict[str, Any] = {"stage": stage, "id": item_id, "text": text_hash(item.text)}
            if spec.seeded:
                record["seed"] = stage_seed(item, preset, stage)
            record["settings"] = {name: getattr(preset, name) for name in spec.settings}
            record["checkpoints"] = {role: self.snapshot.identities[role] for role in spec.checkpoints}
            record["inputs"] = {up: self.digest(up, up_id) for up, up_id in self.inputs(stage, item_id).items()}
            self._records[key] = record
        return self._records[key]

    def digest(self, stage: str, item_id: str) -> str:
        """provenance_digest(self.record(stage, item_id)), with the record's canonical JSON written out directly from
        parts that are the same for every output of the stage: a run of 100,000 prompts has half a million outputs,
        and building each record to serialize it was most of what `status` and the plan cost."""
        key = (stage, item_id)
        digest = self._digests.get(key)
        if digest is None:
            head, tail = self._canonical.get(stage) or self._canonical_parts(stage)
            item = self.item(stage, item_id)
            inputs = ",".join(f'"{up}":"{self.digest(up, up_id)}"'
                              for up, up_id in sorted(self.inputs(stage, item_id).items()))
            seed = f',"seed":{stage_seed(item, self.snapshot.preset, stage)}' if STAGES[stage].seeded else ""
            if item.text not in self._text_hashes:
                self._text_hashes[item.text] = text_hash(item.text)
            canonical = (f'{head}{json.dumps(item_id, ensure_ascii=False)},"inputs":{{{inputs}}}{seed}{tail}'
                         f'{json.dumps(self._text_hashes[item.text])}}}')
            digest = self._digests[key] = hashlib.sha256(canonical.encode()).hexdigest()
        return digest

    def _canonical_parts(self, stage: str) -> tuple[str, str]:
        """The canonical JSON of a stage's records around the parts that differ per output (keys sorted:
        checkpoints, id, inputs, seed, settings, stage, text)."""
        spec, preset = STAGES[stage], self.snapshot.preset
        dumps = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
        checkpoints = json.dumps({role: self.snapshot.identities[role] for role in spec.checkpoints}, **dumps)
        settings = json.dumps({name: getattr(preset, name) for name in spec.settings}, **dumps)
        self._canonical[stage] = (f'{{"checkpoints":{checkpoints},"id":',
                                  f',"settings":{settings},"stage":{json.dumps(stage, **dumps)},"text":')
        return self._canonical[stage]

    def attrs(self, stage: str, item_id: str) -> dict[str, Any]:
        """What an output is written with: its provenance record and that record's digest."""
        return {"provenance": self.record(stage, item_id), "digest": self.digest(stage, item_id)}

    def read_attrs(self, stage: str, item_id: str) -> dict[str, Any]:
        """The attributes of the intact output on disk; raises FileNotFoundError, StoreError or SidecarError."""
        if STAGES[stage].output == "zarr":
            return verify_store(self.output(stage, item_id))
        return verify_sidecar(self.layout.sidecar(stage, item_id, self.tag(stage)))

    def state(self, stage: str, item_id: str) -> OutputState:
        key = (stage, item_id)
        if key not in self._states:
            self._states[key] = self._state(stage, item_id)
        return self._states[key]

    def _state(self, stage: str, item_id: str) -> OutputState:
        expected = self.digest(stage, item_id)
        try:
            attrs = self.read_attrs(stage, item_id)
        except FileNotFoundError:
            return self._not_done(stage, item_id, OutputState(stage, item_id, MISSING))
        except (StoreError, SidecarError) as err:
            return self._not_done(stage, item_id, OutputState(stage, item_id, CORRUPT, (str(err),)))
        if attrs.get("digest") == expected:
            return OutputState(stage, item_id, DONE)
        reasons = self.changes(stage, item_id, attrs.get("provenance") or {})
        return self._not_done(stage, item_id, OutputState(stage, item_id, STALE, reasons))

    def _not_done(self, stage: str, item_id: str, state: OutputState) -> OutputState:
        """A failure recorded for exactly this output, or an input that is not there yet, says more."""
        failure = self.failures.get((stage, item_id, self.digest(stage, item_id)))
        if failure is not None:
            return OutputState(stage, item_id, FAILED, (failure.get("error", "failed"),))
        if state.state == MISSING:
            for up, up_id in self.inputs(stage, item_id).items():
                upstream = self.state(up, up_id)
                if not upstream.done:
                    return OutputState(stage, item_id, BLOCKED, (f"{up} {upstream.state}",))
        return state

    def changes(self, stage: str, item_id: str, recorded: Mapping[str, Any]) -> tuple[str, ...]:
        """What differs between the provenance an output carries and the one it should carry, in words."""
        expected = self.record(stage, item_id)
        reasons = []
        if recorded.get("text") != expected["text"]:
            reasons.append("prompt text changed")
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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
