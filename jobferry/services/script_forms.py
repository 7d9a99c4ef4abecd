"""A script's parameters as a form, and a filled form as the job's ``command``.

Face-neutral: the browser face renders ``form_fields(spec)`` and hands the
submitted values back to ``build_command``, which writes the same ``command``
string a Wooey client would send (every token quoted with ``shlex.quote``, so
a hostile value stays one argument). The job is then submitted through
``JobService.submit`` like any other, with exactly the API's validation; the
checks made here first only exist to put a clear message next to the field it
concerns (required values, numbers, choices, mutually exclusive groups).

Form field names are ``p<index>`` (the parameter's position in the version's
spec). A file input's uploads are referenced in the command by their multipart
field name, the way Wooey clients do: the first upload of ``p3`` is ``p3``, the
next ones ``p3.1``, ``p3.2``... (``upload_refs``).
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobferry.argspec.command import preferred_option
from jobferry.argspec.introspect import ParamSpec, ScriptSpec
from jobferry.errors import ValidationError
from jobferry.services.core import Principal
from jobferry.services.jobs import JobService, JobView
from jobferry.staging.forms import UploadedFile
from jobferry.staging.paths import file_digest, safe_filename

REQUIRED = "This field is required."
WHOLE_NUMBER = "Enter a whole number."
NUMBER = "Enter a number."
#: The fieldset of parameters argparse filed under no group of their own.
DEFAULT_GROUPS = ("positional arguments", "optional arguments", "options")


@dataclass(frozen=True)
class FormField:
    """One parameter as a form input.

    ``kind`` is ``checkbox`` (a flag: checked gives the option), ``count`` (how many
    times the option is given), ``number``, ``text``, ``select``, ``file`` (an
    upload), ``output`` (a file name the script writes) or ``lines`` (several
    values, one per line). ``multiple``: several values (``lines``, a multiple
    ``select``, several files). ``step`` is ``1`` or ``any`` for numbers.
    """

    index: int
    param: ParamSpec
    kind: str
    multiple: bool
    label: str
    options: str
    help: str
    required: bool
    choices: tuple[str, ...] = ()
    step: str = ""
    count_hint: str = ""
    defaults: tuple[str, ...] = ()
    mutex_with: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return field_name(self.index)

    @property
    def id(self) -> str:
        return f"param-{self.index}"


@dataclass(frozen=True)
class FieldGroup:
    """A fieldset: an argparse argument group's parameters (``title`` None: ungrouped)."""

    title: str | None
    fields: list[FormField] = field(default_factory=list)


def field_name(index: int) -> str:
    return f"p{index}"


def upload_refs(index: int, count: int) -> list[str]:
    """The names the uploads of file input *index* go by in the command (and in the
    multipart body once renamed): ``p<i>``, ``p<i>.1``, ..."""
    base = field_name(index)
    return [base if n == 0 else f"{base}.{n}" for n in range(count)]


def _is_multiple(param: ParamSpec) -> bool:
    if param.action in ("append", "extend"):
        return True
    return param.nargs in ("*", "+") or (isinstance(param.nargs, int) and param.nargs > 1)


def _kind(param: ParamSpec) -> str:
    if param.action in ("store_true", "store_false", "store_const"):
        return "checkbox"
    if param.action in ("count", "append_const"):
        return "count"
    if param.is_input_file:
        return "file"
    if param.is_output_file:
        return "output" if not _is_multiple(param) else "lines"
    if param.choices is not None and param.type_name is None:
        return "select"
    if _is_multiple(param):
        return "lines"
    return "number" if param.type in ("int", "float") else "text"


def _count_hint(param: ParamSpec) -> str:
    if isinstance(param.nargs, int) and param.nargs > 1:
        each = f"{param.nargs} values"
        return f"Groups of {each}, one value per line." if param.action == "append" else each
    if param.nargs == "+":
        return "One or more values."
    if _is_multiple(param):
        return "Any number of values."
    return ""


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _defaults(param: ParamSpec, in_mutex: bool) -> tuple[str, ...]:
    """What the input starts with: the parser's default, if it can be typed in."""
    if in_mutex or param.default is None or param.type == "file":
        return ()
    if param.action in ("store_true", "store_false", "store_const", "append_const"):
        return ()
    if param.action == "count":
        return (_text(param.default),) if isinstance(param.default, int) else ()
    if isinstance(param.default, list):
        return tuple(_text(v) for v in _flatten(param.default))
    if isinstance(param.default, (str, int, float)):
        return (_text(param.default),)
    return ()


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, list):
        return [leaf for item in values for leaf in _flatten(item)]
    return [values]


def form_fields(spec: ScriptSpec) -> list[FieldGroup]:
    """The spec's parameters as inputs, in fieldsets by argparse group (the
    default groups first, as one unnamed set)."""
    mutex_of: dict[str, tuple[str, ...]] = {}
    label_of = {p.dest: _label(p) for p in spec.params}
    for group in spec.mutually_exclusive:
        for dest in group.dests:
            mutex_of[dest] = tuple(label_of.get(d, d) for d in group.dests if d != dest)
    groups: dict[str | None, FieldGroup] = {None: FieldGroup(None)}
    for index, param in enumerate(spec.params):
        kind = _kind(param)
        title = None if param.group in DEFAULT_GROUPS else param.group
        choices = tuple(_text(c) for c in param.choices or ()) if kind == "select" else ()
        group_required = any(param.dest in g.dests and g.required for g in spec.mutually_exclusive)
        form_field = FormField(
            index=index,
            param=param,
            kind=kind,
            multiple=_is_multiple(param),
            label=label_of[param.dest],
            options=", ".join(param.option_strings),
            help=param.help or "",
            required=param.required and not group_required,
            choices=choices,
            step="1" if param.type == "int" else ("any" if param.type == "float" else ""),
            count_hint=_count_hint(param),
            defaults=_defaults(param, param.dest in mutex_of),
            mutex_with=mutex_of.get(param.dest, ()),
        )
        groups.setdefault(title, FieldGroup(title)).fields.append(form_field)
    return [g for g in groups.values() if g.fields]


def _label(param: ParamSpec) -> str:
    return param.display_name if param.option_strings else param.dest


# --- values -> command ------------------------------------------------------------


def _given(
    param: ParamSpec, index: int, values: Mapping[str, Sequence[str]], files: Mapping[str, int]
) -> list[str]:
    """The non-empty values of one field (a ``lines`` field: one per line)."""
    if param.is_input_file:
        return upload_refs(index, files.get(field_name(index), 0))
    raw = list(values.get(field_name(index), ()))
    if _kind(param) == "lines":
        raw = [line for text in raw for line in text.splitlines()]
    return [v.strip() if _kind(param) in ("number", "count") else v for v in raw if v.strip()]


def _check_value(param: ParamSpec, value: str) -> str | None:
    """A message for a value the script's parser would refuse, else None."""
    if param.type == "int" and param.takes_values:
        try:
            int(value)
        except ValueError:
            return WHOLE_NUMBER
    if param.type == "float" and param.takes_values:
        try:
            if not math.isfinite(float(value)):
                return NUMBER
        except ValueError:
            return NUMBER
    if param.choices is not None and param.type_name is None and param.type != "file":
        if value not in {_text(c) for c in param.choices}:
            return f"Select a valid choice. {value} is not one of the available choices."
    return None


def _occurrences(param: ParamSpec, items: list[str]) -> list[list[str]]:
    """The uses of an option that give *items*: one per value, or all at once."""
    if param.action == "append" and isinstance(param.nargs, int):
        return [items[i : i + param.nargs] for i in range(0, len(items), param.nargs)]
    if param.action in ("append", "extend") and param.nargs in (None, "?"):
        return [[item] for item in items]
    if param.nargs is None or param.nargs == "?":
        return [items[-1:]]
    return [items]


def _tokens(param: ParamSpec, given: list[str]) -> list[str]:
    """The command tokens of one parameter given *given* (never empty)."""
    if param.positional:
        return given
    option = preferred_option(param)
    if param.action in ("store_true", "store_false", "store_const"):
        return [option]
    if param.action in ("count", "append_const"):
        return [option] * int(given[-1])
    tokens: list[str] = []
    for values in _occurrences(param, given):
        if len(values) == 1 and param.nargs in (None, "?"):
            tokens.append(f"{option}={values[0]}")  # safe for values starting with '-'
        else:
            tokens.extend([option, *values])
    return tokens


def _field_problems(param: ParamSpec, given: list[str]) -> list[str]:
    if param.action in ("count", "append_const"):
        if not given[-1].isdigit() or int(given[-1]) > 100:
            return ["Enter a whole number from 0 to 100."]
        return []
    if not param.takes_values:
        return []
    problems = [p for v in given if (p := _check_value(param, v)) is not None]
    nargs = param.nargs
    if isinstance(nargs, int) and len(given) % nargs:
        problems.append(f"Give {nargs} values at a time (one per line); got {len(given)}.")
    elif (
        isinstance(nargs, int) and param.action not in ("append", "extend") and len(given) != nargs
    ):
        problems.append(f"Give exactly {nargs} values (one per line); got {len(given)}.")
    elif nargs in (None, "?") and param.action == "store" and len(given) > 1:
        problems.append("Give one value.")
    return list(dict.fromkeys(problems))


def build_command(
    spec: ScriptSpec, values: Mapping[str, Sequence[str]], files: Mapping[str, int]
) -> str:
    """The ``command`` string of a filled form.

    Args:
        spec: the script version's parameters.
        values: form field -> its values as submitted (``p<index>``; a checkbox
            is given when checked, any value).
        files: a file input's field -> how many uploads it has (referenced in the
            command as ``upload_refs``).

    Raises:
        ValidationError: ``errors`` maps field names (``p<index>``) to messages:
            a required value missing, a value of the wrong type or not among the
            choices, two options of one mutually exclusive group given (or none
            of a required group).
    """
    errors: dict[str, list[str]] = {}
    given: dict[int, list[str]] = {}
    for index, param in enumerate(spec.params):
        items = _given(param, index, values, files)
        if not items or (_kind(param) == "count" and items[-1] == "0"):
            if param.required:
                errors.setdefault(field_name(index), []).append(REQUIRED)
            continue
        problems = _field_problems(param, items)
        if problems:
            errors[field_name(index)] = problems
        given[index] = items
    index_of = {p.dest: i for i, p in enumerate(spec.params)}
    for group in spec.mutually_exclusive:
        members = [index_of[d] for d in group.dests if d in index_of]
        chosen = [i for i in members if i in given]
        names = ", ".join(_label(spec.params[i]) for i in members)
        if len(chosen) > 1:
            for i in chosen:
                errors.setdefault(field_name(i), []).append(f"Give only one of: {names}.")
        elif group.required and not chosen:
            for i in members:
                errors.setdefault(field_name(i), []).append(f"Give one of: {names}.")
    if errors:
        raise ValidationError("Please correct the fields marked below.", errors=errors)
    options = [
        t
        for i, items in given.items()
        if not spec.params[i].positional
        for t in _tokens(spec.params[i], items)
    ]
    positionals = [t for i, items in given.items() if spec.params[i].positional for t in items]
    tokens = options + (["--", *positionals] if positionals else [])
    return shlex.join(tokens)


def field_errors(spec: ScriptSpec, errors: Mapping[str, Any]) -> dict[str, list[str]]:
    """A submission's validation errors by form field: a parameter's display name
    (the API's key) becomes its field; ``command`` (a parse error naming options)
    goes to the fields whose options it names, else stays ``command``."""
    by_name = {p.display_name: field_name(i) for i, p in enumerate(spec.params)}
    out: dict[str, list[str]] = {}
    for key, messages in errors.items():
        texts = [messages] if isinstance(messages, str) else [str(m) for m in messages]
        target = by_name.get(key)
        if target is None and key == "command":
            for text in texts:
                named = [
                    field_name(i)
                    for i, p in enumerate(spec.params)
                    if any(_mentions(text, o) for o in p.option_strings)
                    or (p.positional and _mentions(text, p.dest))
                ]
                for name in named or ["command"]:
                    out.setdefault(name, []).append(text)
            continue
        out.setdefault(target or key, []).extend(texts)
    return out


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


# --- rerun --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeptFile:
    """An earlier job's input file, offered for re-use: ``keep-p<index>`` = its id."""

    id: str
    name: str
    size: int | None


def prefill(spec: ScriptSpec, params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The form values that gave a job's stored ``params`` (dest -> parsed values)."""
    values: dict[str, list[str]] = {}
    for index, param in enumerate(spec.params):
        if param.dest not in params or param.is_input_file:
            continue
        value = params[param.dest]
        kind = _kind(param)
        if kind == "checkbox":
            if value == {"store_true": True, "store_false": False}.get(param.action, param.const):
                values[field_name(index)] = ["on"]
        elif kind == "count":
            n = len(value) if isinstance(value, list) else value
            values[field_name(index)] = [str(n)]
        elif kind == "lines":
            values[field_name(index)] = ["\n".join(_text(v) for v in _flatten(value))]
        else:
            values[field_name(index)] = [_text(v) for v in _flatten(value)]
    return values


def kept_files(spec: ScriptSpec, view: JobView) -> dict[str, list[KeptFile]]:
    """An earlier job's input files by the form's file field they were given to."""
    field_of = {p.dest: field_name(i) for i, p in enumerate(spec.params) if p.is_input_file}
    kept: dict[str, list[KeptFile]] = {}
    for job_file in view.files:
        if job_file.kind != "input" or job_file.param not in field_of:
            continue
        name = job_file.name.rsplit("/", 1)[-1]
        kept.setdefault(field_of[job_file.param], []).append(
            KeptFile(job_file.id, name, job_file.size)
        )
    return kept


def reuse_inputs(
    jobs: JobService,
    principal: Principal,
    job_id: str,
    keep: Mapping[str, Sequence[str]],
    into: Path,
) -> list[UploadedFile]:
    """Copies of an earlier job's input files, as uploads of the fields in *keep*
    (field -> file ids, in order): the files are read through ``JobService`` (the
    job must be the principal's, or the principal an admin; confined to its
    directory) and copied into *into*, the new submission's upload directory."""
    uploads: list[UploadedFile] = []
    for field_, ids in keep.items():
        for ref, file_id in zip(upload_refs(int(field_[1:]), len(ids)), ids, strict=True):
            path, job_file = jobs.output_path(principal, job_id, file_id)
            if job_file.kind != "input":
                raise ValidationError(
                    errors={field_: ["That file is not one of the job's inputs."]}
                )
            name = safe_filename(job_file.name.rsplit("/", 1)[-1])
            target = into / f"kept-{len(uploads)}-{name}"
            shutil.copyfile(path, target)
            size, sha256 = file_digest(target)
            uploads.append(UploadedFile(ref, name, target, size, sha256))
    return uploads


def name_uploads(uploads: Sequence[UploadedFile]) -> tuple[list[UploadedFile], dict[str, int]]:
    """The form's uploads renamed to their ``upload_refs`` (several files of one
    input each get a name of their own), and how many each field has. Empty file
    inputs (no file chosen) are left out."""
    named: list[UploadedFile] = []
    counts: dict[str, int] = {}
    for upload in uploads:
        if not upload.filename and not upload.size:
            continue
        n = counts.get(upload.field, 0)
        counts[upload.field] = n + 1
        named.append(replace(upload, field=upload.field if n == 0 else f"{upload.field}.{n}"))
    return named, counts
