"""push_to_hub / from_pretrained against the local hub server, in fresh processes
(`huggingface_hub` reads HF_ENDPOINT at import time)."""

import json

import pytest

from conftest import TINY_TOKENIZER, run_module
from hubserver import LocalHub, client, hub_env


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def test_tokenizer_push_and_load_round_trip(hub, tmp_path):
    out = client(hub, tmp_path / "home_push", """
        import torch
        from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
        torch.manual_seed(0)
        cfg = ImageTokenizerConfig(image_size=8, base_channels=8, channel_mult=[1, 2], num_downsamples=1,
                                   latent_channels=8, codebook_size=32, vq_kmeans_init=False)
        model = ImageTokenizer(cfg).eval()
        url = model.push_to_hub("user/tok")
        print("URL", url)
        images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
        print("CODES", model.encode(images).flatten().tolist())
    """)
    assert "user/tok" in out
    codes = [line for line in out.splitlines() if line.startswith("CODES")][0]
    # a fresh process with an empty cache downloads the repo and gets the same codes
    script = """
        import torch
        from stage1_tokenizer import ImageTokenizer
        model = ImageTokenizer.from_pretrained("user/tok")
        images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
        print("CODES", model.encode(images).flatten().tolist())
    """
    assert codes in client(hub, tmp_path / "home_load", script)
    # offline, from the cache the first load filled
    assert codes in client(hub, tmp_path / "home_load", script, HF_HUB_OFFLINE="1")


def test_missing_repo_and_revision_are_clear_errors(hub, tmp_path):
    client(hub, tmp_path / "home", """
        from stage1_tokenizer import ImageTokenizer
        for repo, rev, words in [("user/nothing", None, "neither a local directory nor a hub repo"),
                                 ("user/nothing", "v2", "neither a local directory nor a hub repo")]:
            try:
                ImageTokenizer.from_pretrained(repo, revision=rev)
            except FileNotFoundError as err:
                assert words in str(err), err
            else:
                raise AssertionError("expected FileNotFoundError")
    """)


def test_training_pushes_final_model_and_reads_a_hub_dataset(hub, tmp_path, digits_parquet):
    env = hub_env(hub, tmp_path / "home")
    # a hub dataset: the digits parquet files uploaded as a dataset repo
    client(hub, tmp_path / "home", f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("user/digits", repo_type="dataset")
        api.upload_folder(folder_path="{digits_parquet}", path_in_repo="data", repo_id="user/digits",
                          repo_type="dataset")
    """)
    out = tmp_path / "run"
    run_module(["-m", "stage1_tokenizer.train", "--config", "configs/tokenizer/fashion_mnist_vq.yaml",
                "data.dataset=user/digits", f"output_dir={out}", *TINY_TOKENIZER, "train.max_steps=20",
                "train.checkpoint_every=10", "hub.repo_id=user/tok-run", "hub.strategy=every_save"],
               env={**env, "OMP_NUM_THREADS": "1"})
    metrics = json.loads((out / "final" / "eval_metrics.json").read_text())
    assert metrics["num_images"] == 297  # the hub dataset's test split
    commits = client(hub, tmp_path / "home2", f"""
        from huggingface_hub import HfApi, hf_hub_download
        print("\\n".join(c.title for c in HfApi().list_repo_commits("user/tok-run")))
        remote = open(hf_hub_download("user/tok-run", "model.safetensors"), "rb").read()
        assert remote == open("{out}/final/model.safetensors", "rb").read()
    """)
    # one commit per checkpoint; the final model equals the last checkpoint, so pushing it changes nothing
    assert "step 10" in commits and "step 20" in commits


def test_push_command_uploads_a_saved_directory(hub, tmp_path):
    from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig

    cfg = ImageTokenizerConfig(image_size=8, base_channels=8, channel_mult=[1, 2], num_downsamples=1,
                               latent_channels=8, codebook_size=32)
    ImageTokenizer(cfg).save_pretrained(tmp_path / "tok")
    client(hub, tmp_path / "home", f"""
        from commands.push import push_main
        url = push_main(["{tmp_path / 'tok'}", "user/pushed", "--message", "first"])
        assert "user/pushed" in url, url
        from huggingface_hub import HfApi
        assert [c.title for c in HfApi().list_repo_commits("user/pushed")][0] == "first"
        from stage1_tokenizer import ImageTokenizer
        ImageTokenizer.from_pretrained("user/pushed")
    """)
    with pytest.raises(SystemExit):
        from commands.push import push_main
        (tmp_path / "empty").mkdir()
        push_main([str(tmp_path / "empty"), "user/x"])  # not a saved model directory


def test_prior_push_and_load_round_trip(hub, tmp_path):
    state = tmp_path / "state.safetensors"
    client(hub, tmp_path / "home_push", f"""
        import torch
        from stage2_prior.layout import TokenLayout
        from stage2_prior.model import ImagePrior, PriorConfig
        torch.manual_seed(0)
        layout = TokenLayout(codebook_size=16, grid=(2, 2), num_classes=2, class_names=["a", "b"])
        prior = ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=1, num_heads=2), layout)
        url = prior.push_to_hub("user/prior")
        assert "user/prior" in url, url
        from trainkit.files import save_state_dict
        save_state_dict(prior.state_dict(), "{state}")
        from huggingface_hub import HfApi
        assert [c.title for c in HfApi().list_repo_commits("user/prior")][0] == "Upload ImagePrior"
    """)
    client(hub, tmp_path / "home_load", f"""
        import torch
        from transformers import AutoModelForCausalLM
        from stage2_prior.model import ImagePrior
        prior = ImagePrior.from_pretrained("user/prior")
        assert list(prior.layout.class_names) == ["a", "b"]
        from safetensors.torch import load_file
        pushed = load_file("{state}")
        assert all(torch.equal(pushed[k], v) for k, v in prior.state_dict().items())
        lm = AutoModelForCausalLM.from_pretrained("user/prior")      # a plain transformers repo too
        assert type(lm).__name__ == "LlamaForCausalLM"
    """)
