"""upload() and hf_write_file() with the real huggingface_hub client against the Hub stand-in."""


import pytest
import requests
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from common.jobs import JobError
from common.uploads import upload

HF_TOKEN = "hf_testwritetoken0000"


def test_raw_safetensors_and_config_in_one_commit(hub_server, lora_file):
    config = lora_file.parent / "adapter_config.json"
    config.write_text("{}")
    spec = {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "tester/my-lora"}}
    before = len(hub_server.state.commits)
    rec = upload([lora_file, config], spec, job_id="job-hf")
    assert len(hub_server.state.commits) == before + 1
    assert sorted(hub_server.state.commits[-1]["files"]) == ["adapter_config.json", "adapter_model.safetensors"]
    assert hub_server.state.files("tester/my-lora")["adapter_model.safetensors"] == lora_file.read_bytes()
    assert rec["safetensors_url"] == rec["download_url"] == \
        f"{hub_server.url}/tester/my-lora/resolve/main/adapter_model.safetensors?download=true"
    assert rec["repo_url"] == f"{hub_server.url}/tester/my-lora"
    assert rec["expires_in_days"] is None and "archive_size_mb" not in rec
    assert hub_server.state.repos["model:tester/my-lora"]["private"] is True
    got = requests.get(rec["download_url"], headers={"Authorization": f"Bearer {HF_TOKEN}"}, timeout=10)
    assert got.content == lora_file.read_bytes()
    assert requests.get(rec["download_url"], timeout=10).status_code == 401  # private


def test_second_upload_to_an_existing_repo(hub_server, lora_file):
    spec = {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "tester/twice"}}
    upload([lora_file], spec, job_id="a")
    lora_file.write_bytes(b"newer weights")
    rec = upload([lora_file], spec, job_id="b")  # create_repo answers 409, the commit still lands
    assert rec["download_method"] == "huggingface"
    assert hub_server.state.files("tester/twice")["adapter_model.safetensors"] == b"newer weights"
    info = HfApi(endpoint=hub_server.url, token=HF_TOKEN).repo_info("tester/twice")
    assert info.private and [s.rfilename for s in info.siblings] == ["adapter_model.safetensors"]
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub_server.url, token=False).repo_info("tester/twice")  # private: hidden without token


def test_repo_name_without_owner_gets_the_token_owner(hub_server, lora_file):
    rec = upload([lora_file], {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "plain",
                                                                        "private": False}}, job_id="j")
    assert rec["repo_url"].endswith("/tester/plain")
    assert hub_server.state.repos["model:tester/plain"]["private"] is False
    assert requests.get(rec["download_url"], timeout=10).content == lora_file.read_bytes()  # public


def test_repo_id_generated_from_the_job_id(hub_server, lora_file, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    rec = upload([lora_file], {"method": "huggingface"}, job_id="job-42")
    assert rec["repo_url"] == f"{hub_server.url}/tester/outputs-job-42"
    assert "model:tester/outputs-job-42" in hub_server.state.repos


def test_bad_token_names_write_access(hub_server, lora_file):
    with pytest.raises(JobError) as info:
        upload([lora_file], {"method": "huggingface", "huggingface": {"token": "hf_notvalidtoken9999",
                                                                      "repo_id": "tester/x"}}, job_id="j")
    assert info.value.code == "upload_failed"
    assert "401" in info.value.details[0] and "write access" in info.value.details[0]
    assert "hf_notvalidtoken9999" not in repr(info.value.details) + info.value.message


def test_stand_in_takes_upload_file_and_upload_folder(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url, token=HF_TOKEN)
    api.create_repo("tester/data", repo_type="dataset", private=False)
    api.upload_file(path_or_fileobj=b"one", path_in_repo="a/one.txt", repo_id="tester/data", repo_type="dataset")
    folder = tmp_path / "outdir"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.json").write_text("{}")
    (folder / "sub" / "y.bin").write_bytes(b"\0\1")
    before = len(hub_server.state.commits)
    api.upload_folder(folder_path=folder, path_in_repo="run1", repo_id="tester/data", repo_type="dataset")
    assert len(hub_server.state.commits) == before + 1
    assert hub_server.state.files("tester/data", "dataset") == {"a/one.txt": b"one", "run1/x.json": b"{}",
                                                                "run1/sub/y.bin": b"\0\1"}
    got = requests.get(f"{hub_server.url}/datasets/tester/data/resolve/main/run1/sub/y.bin", timeout=10)
    assert got.content == b"\0\1"


def test_generated_repo_name_is_a_valid_hub_name(hub_server, lora_file, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    rec = upload([lora_file], {"method": "huggingface"}, job_id="sync-1a2b/c3 d4:u1")
    assert rec["repo_url"] == f"{hub_server.url}/tester/outputs-sync-1a2b_c3_d4_u1"  # common.volumes.safe_job_id


def test_stand_in_serves_hf_hub_download(hub_server, lora_file, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    upload([lora_file], {"method": "huggingface", "huggingface": {"token": HF_TOKEN, "repo_id": "tester/dl"}},
           job_id="j")
    got = hf_hub_download("tester/dl", "adapter_model.safetensors", endpoint=hub_server.url, token=HF_TOKEN,
                          cache_dir=tmp_path / "cache")
    assert open(got, "rb").read() == lora_file.read_bytes()
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/dl", "missing.bin", endpoint=hub_server.url, token=HF_TOKEN,
                        cache_dir=tmp_path / "cache")
