import subprocess
import sys
from importlib import metadata


def test_torch_is_the_cpu_wheel_and_no_cuda_was_pulled():
    result = subprocess.run([sys.executable, "scripts/check_torch_cpu.py"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prompts_ship_as_package_data_and_the_console_script_exists():
    files = [str(f) for f in metadata.files("fret-distill") or []]
    entry_points = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert entry_points.get("fret") == "beam_jobs.cli:main"
    from importlib import resources

    assert resources.files("prompts").joinpath("query_generation_v1.txt").is_file()
    assert files  # installed metadata is present


def test_cli_help_and_clear_errors():
    fret = [sys.executable, "-m", "beam_jobs.cli"]
    help_text = subprocess.run(fret + ["run", "--help"], capture_output=True, text=True).stdout
    for flag in ("--input", "--llm_url", "--num_neighbors", "--negative_strategy", "--rrf_k", "--decontaminate"):
        assert flag in help_text
    missing = subprocess.run(fret + ["run"], capture_output=True, text=True)
    assert missing.returncode == 2 and "--input and --output are required" in missing.stderr
    unreachable = subprocess.run(fret + ["run", "--input", "samples/passages.jsonl", "--output", "/tmp/x",
                                         "--llm_url", "http://127.0.0.1:9"], capture_output=True, text=True)
    assert unreachable.returncode == 2 and "cannot reach the LLM server" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
