"""Generate the request/response reference of each image from its pydantic models, and the
environment table of an image from its settings object.

    python -m scripts.gen_docs            write docs/schemas/*.json and the generated sections of each image page
    python -m scripts.gen_docs --check    exit 1 naming what is stale (tests/test_docs_schemas.py runs this)

Each image page (docs/<image>.md) holds a section between `<!-- BEGIN GENERATED: schema -->` and
`<!-- END GENERATED: schema -->`: field tables of the request and of each response shape, from
the JSON schemas written beside them in docs/schemas/<image>.{request,response}.json. A page
whose image has a settings object (`ENV_TABLES`) also holds `<!-- BEGIN GENERATED: environment -->`
... `<!-- END GENERATED: environment -->`: the table of its environment variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union, get_args

from pydantic import BaseModel, Field, TypeAdapter

from common.env_settings import cell, default_cell, markdown_table, variable_cell

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"
BEGIN = "<!-- BEGIN GENERATED: schema -->"
END = "<!-- END GENERATED: schema -->"
ENV_BEGIN = "<!-- BEGIN GENERATED: environment -->"
ENV_END = "<!-- END GENERATED: environment -->"
# Models documented on a page of their own: a field of this type links there instead of listing it.
LINKED = {"UploadSpec": ("the shared upload spec", "uploads.md"),
          "UploadRecord": ("the upload record", "uploads.md#result"),
          "LoraOutput": ("the upload record of the LoRA", "uploads.md#result")}


@dataclass
class Shape:
    title: str
    adapter: TypeAdapter


@dataclass
class ImageDoc:
    name: str
    request: list[Shape]
    responses: list[Shape]


def images() -> list[ImageDoc]:
    from common.result_models import ErrorResult
    from handlers.controlnet_pyworker.responses import GenerateResponse
    from handlers.controlnet_pyworker.schema import GenerateRequest
    from handlers.diffusion_pipe_trainer.responses import DryRunResult, TrainResult
    from handlers.diffusion_pipe_trainer.schema import TrainRequest
    from handlers.swarm_worker.responses import ActionFailure, GenerateResult, LeaseGranted, LeaseReleased
    from handlers.swarm_worker.schema import SwarmAction

    error = Shape("Failure (any request)", TypeAdapter(ErrorResult))
    return [
        ImageDoc("controlnet-pyworker",
                 [Shape("Request (`POST /generate` body, RunPod job `input`)", TypeAdapter(GenerateRequest))],
                 [Shape("Response", TypeAdapter(GenerateResponse)), error]),
        ImageDoc("diffusion-pipe-trainer",
                 [Shape("Request (RunPod job `input`)", TypeAdapter(TrainRequest))],
                 [Shape("Response: training finished", TypeAdapter(TrainResult)),
                  Shape("Response: dry run", TypeAdapter(DryRunResult)), error]),
        ImageDoc("swarm-worker",
                 [Shape(f"Request `{'` / `'.join(get_args(model.model_fields['action'].annotation))}` "
                        "(RunPod job `input`)", TypeAdapter(model)) for model in get_args(get_args(SwarmAction)[0])],
                 [Shape("Lease: first streamed output", TypeAdapter(LeaseGranted)),
                  Shape("Lease: final output", TypeAdapter(LeaseReleased)),
                  Shape("`generate` result", TypeAdapter(GenerateResult)),
                  Shape("`generate` failure", error.adapter),
                  Shape("Other actions' failures", TypeAdapter(ActionFailure))]),
    ]


def union_schema(shapes: list[Shape]) -> dict:
    """One JSON schema for the shapes: the model itself, or a `oneOf` of them."""
    if len(shapes) == 1:
        return shapes[0].adapter.json_schema()
    models = tuple(s.adapter.core_schema["cls"] for s in shapes)
    if all("action" in m.model_fields for m in models):
        union = Annotated[Union[models], Field(discriminator="action")]  # noqa: UP007 (a runtime tuple)
    else:
        union = Union[models]  # noqa: UP007
    return TypeAdapter(union).json_schema()


# --- field tables ----------------------------------------------------------------------------------------

def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def _ref_name(node: dict) -> str | None:
    for option in [node, *node.get("anyOf", [])]:
        if "$ref" in option:
            return option["$ref"].rsplit("/", 1)[1]
    return None


def _type(node: dict, defs: dict) -> str:
    if "anyOf" in node:
        return " | ".join(_type(o, defs) for o in node["anyOf"])
    if "$ref" in node:
        return "object"
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " | ".join(json.dumps(v) for v in node["enum"])
    kind = node.get("type", "any")
    if kind == "array":
        return f"array of {_type(node.get('items', {}), defs)}"
    if kind == "object" and "additionalProperties" in node and isinstance(node["additionalProperties"], dict):
        return f"object of {_type(node['additionalProperties'], defs)}"
    limits = [f"{sym} {node[key]}" for key, sym in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                                    ("exclusiveMaximum", "<")) if key in node]
    limits += [f"{node[key]} {word}" for key, word in (("minLength", "chars min"), ("maxLength", "chars max"))
               if key in node]
    return kind + (f" ({', '.join(limits)})" if limits else "")


def rows(schema: dict, defs: dict, prefix: str = "", response: bool = False) -> list[str]:
    node = _resolve(schema, defs)
    required = set(node.get("required", []))
    out = []
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        ref = _ref_name(prop)
        if response:
            default = "always" if name in required else "when set"
        else:
            default = ("required" if name in required else
                       f"`{json.dumps(prop['default'])}`" if "default" in prop else "")
        desc = prop.get("description", "")
        if ref in LINKED:
            what, link = LINKED[ref]
            out.append(f"| `{path}` | object | {default} | {cell(desc)} ({what}: [{link.split('#')[0]}]({link})) |")
        elif ref is not None and _resolve({"$ref": f"#/$defs/{ref}"}, defs).get("properties"):
            out.append(f"| `{path}` | object | {default} | {cell(desc)} |")
            out += rows({"$ref": f"#/$defs/{ref}"}, defs, prefix=f"{path}.", response=response)
        else:
            items = prop.get("items", {})
            if prop.get("type") == "array" and "$ref" in items:
                out.append(f"| `{path}` | array of objects | {default} | {cell(desc)} |")
                out += rows(items, defs, prefix=f"{path}[].", response=response)
            else:
                out.append(f"| `{path}` | {cell(_type(prop, defs))} | {default} | {cell(desc)} |")
    return out


def shape_table(shape: Shape, response: bool = False) -> str:
    schema = shape.adapter.json_schema()
    defs = schema.get("$defs", {})
    lines = [f"#### {shape.title}", ""]
    doc = _resolve(schema, defs).get("description")
    if doc and set(shape.adapter.core_schema["cls"].model_fields) == {"action"}:  # says what the actions do
        lines += [cell(doc), ""]
    column = "present" if response else "default"
    lines += [f"| field | type | {column} | description |", "|---|---|---|---|",
              *rows(schema, defs, response=response), ""]
    if not response:  # pydantic: extra="forbid" -> false, "allow" -> true, "ignore" -> absent
        extra = _resolve(schema, defs).get("additionalProperties", "ignore")
        lines += [{False: "Other keys are refused.", True: "Other keys pass through.",
                   "ignore": "Other keys are ignored."}[extra], ""]
    return "\n".join(lines)


def env_tables() -> dict[str, str]:
    """The environment table of each image that has a settings object, by page name."""
    from handlers.controlnet_pyworker.settings import env_table
    from handlers.diffusion_pipe_trainer.settings import TrainerSettings
    from handlers.swarm_worker.config import env_table as swarm_env_table

    return {"controlnet-pyworker": env_table(), "diffusion-pipe-trainer": settings_table(TrainerSettings),
            "swarm-worker": swarm_env_table()}


def settings_table(model: type[BaseModel]) -> str:
    """The environment table of a pydantic settings model: each field's variable(s), default, description."""
    rows = []
    for field in model.model_fields.values():
        extra = field.json_schema_extra or {}
        first, *others = extra["env"]
        shown = extra.get("shown_default") or default_cell(field.default)
        rows.append([variable_cell(first, others), shown, field.description or ""])
    return markdown_table(["variable", "default", "meaning"], rows)


def env_section(table: str) -> str:
    return "\n".join([ENV_BEGIN, "<!-- generated by `python -m scripts.gen_docs` from the settings object; edit that, "
                      "not this -->", "", table, ENV_END])


def replaced(text: str, begin: str, end: str, body: str, page: Path) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{page.relative_to(ROOT)}: no '{begin}' ... '{end}' section")
    head, rest = text.split(begin, 1)
    return head + body + rest.split(end, 1)[1]


def section(img: ImageDoc) -> str:
    body = [BEGIN,
            "<!-- generated by `python -m scripts.gen_docs` from the pydantic models; edit those, not this -->",
            "", "### Request and response reference", "",
            f"JSON schemas: [request](schemas/{img.name}.request.json), "
            f"[response](schemas/{img.name}.response.json).", ""]
    body += [shape_table(s) for s in img.request]
    body += [shape_table(s, response=True) for s in img.responses]
    body.append(END)
    return "\n".join(body)


# --- files -----------------------------------------------------------------------------------------------

def outputs() -> dict[Path, str]:
    """Every generated file with the content it must have."""
    files: dict[Path, str] = {}
    tables = env_tables()
    for img in images():
        for kind, shapes in (("request", img.request), ("response", img.responses)):
            files[SCHEMAS / f"{img.name}.{kind}.json"] = json.dumps(union_schema(shapes), indent=2,
                                                                   sort_keys=True) + "\n"
        page = DOCS / f"{img.name}.md"
        text = replaced(page.read_text(), BEGIN, END, section(img), page)
        if img.name in tables:
            text = replaced(text, ENV_BEGIN, ENV_END, env_section(tables[img.name]), page)
        files[page] = text
    return files


def stale() -> list[str]:
    return [str(p.relative_to(ROOT)) for p, text in outputs().items() if not p.exists() or p.read_text() != text]


def undescribed(schema: dict, where: str = "") -> list[str]:
    """Properties without a `description`, anywhere in a JSON schema."""
    missing = []
    for name, sub in schema.get("$defs", {}).items():
        missing += undescribed(sub, f"{name}.")
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            missing.append(f"{where}{name}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"stale: {path} (run `python -m scripts.gen_docs`)", file=sys.stderr)
        return 1 if old else 0
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for path, text in outputs().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
