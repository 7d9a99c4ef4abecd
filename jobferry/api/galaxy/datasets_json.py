"""Galaxy's dataset shape: a job file as a history dataset (``HistoryDatasetAssociation``).

Built from the services' ``DatasetRecord``. This daemon has no histories of
datasets, only jobs' files: every one is ``ok``, visible, its extension taken from
its name (``data`` when it has none that looks like one); deleted and purged only
once retention deleted its job's files (its display then answers 410 Gone).
"""

from __future__ import annotations

from typing import Any

from jobferry.api.galaxy.formats import human_bytes, iso
from jobferry.services.records import DatasetRecord


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    _, dot, ext = base.rpartition(".")
    ext = ext.lower()
    return ext if dot and ext.isalnum() and len(ext) <= 16 else "data"


def dataset(record: DatasetRecord) -> dict[str, Any]:
    """``GET /api/datasets/{id}``: a job file as a history dataset."""
    job_file = record.file
    ext = _extension(job_file.name)
    return {
        "model_class": "HistoryDatasetAssociation",
        "id": job_file.id,
        "name": job_file.name.rsplit("/", 1)[-1],
        "history_id": record.history_id,
        "hid": None,
        "state": "ok",
        "extension": ext,
        "file_ext": ext,
        "file_size": job_file.size,
        "create_time": iso(job_file.created_at),
        "update_time": iso(job_file.created_at),
        "deleted": record.files_expired,
        "purged": record.files_expired,
        "visible": True,
        "hda_ldda": "hda",
        "download_url": f"/api/datasets/{job_file.id}/display",
        "creating_job": job_file.job_id,
        "genome_build": "?",
        "misc_info": "files expired (retention)" if record.files_expired else "",
        "misc_blurb": human_bytes(job_file.size),
        "peek": None,
        "uuid": None,
        "hashes": [
            {
                "model_class": "DatasetHash",
                "hash_function": "SHA-256",
                "hash_value": job_file.sha256,
                "extra_files_path": None,
            }
        ],
    }
