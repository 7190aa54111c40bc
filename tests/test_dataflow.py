"""Dataflow: Beam translates the job for the Dataflow service offline (--dry_run true: the job is
built with its worker container and options, and nothing is submitted). The in-worker vLLM
mode itself runs on the DirectRunner in test_fret_job_vllm.py."""

import pytest

from beam_jobs import fret_job

apiclient = pytest.importorskip("apache_beam.runners.dataflow.internal.apiclient",
                                reason="needs apache-beam[gcp] (the test extra installs it)")

IMAGE = "us-docker.pkg.dev/my-project/fret/worker:latest"


def test_dataflow_dry_run_translates_the_job_with_in_worker_vllm():
    result = fret_job.run([
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://my-bucket/tmp", "--dry_run", "true",
        "--input", "gs://my-bucket/corpus/*.jsonl", "--output", "gs://my-bucket/fret/run1",
        "--llm_serve", "/models/qwen", "--llm_model", "qwen", "--llm_serve_args", "--tensor-parallel-size 1",
        "--machine_type", "g2-standard-8",
        "--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
        "--sdk_container_image", IMAGE, "--number_of_worker_harness_threads", "8",
    ], save_main_session=False)
    job = result.job
    assert job.proto.type.name == "JOB_TYPE_BATCH"
    pipeline = job.proto_pipeline
    top_level = {t.unique_name for t in pipeline.components.transforms.values() if "/" not in t.unique_name}
    assert {"ReadSeedPassages", "GenerateQueries", "RetrieveCandidates", "RerankAndMine", "WriteExamples",
            "WriteDeadLetters", "WriteManifest"} <= top_level
    environments = list(pipeline.components.environments.values())
    assert environments and all(env.urn == "beam:env:docker:v1" and IMAGE.encode() in env.payload
                                for env in environments)
    # Passage-major scoring: the pairs are grouped by passage before the LLM step, so one worker
    # (and its in-worker server, with its prefix cache) scores every pair of a passage; then the
    # scores are regrouped by query.
    assert "RerankAndMine/ByPassage" in upstream(pipeline, "RerankAndMine/Score")
    assert "RerankAndMine/Score" in upstream(pipeline, "RerankAndMine/ByQuery")
    options = job.options.get_all_options()
    assert options["llm_serve"] == "/models/qwen" and options["machine_type"] == "g2-standard-8"
    assert options["score_order"] == "passage" and options["ql_path"] == "prefix_cache"  # the server it starts has it
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" in options["dataflow_service_options"]


def test_dataflow_dry_run_translates_the_job_on_given_queries():
    result = fret_job.run([
        "--runner", "DataflowRunner", "--project", "my-project", "--region", "us-central1",
        "--temp_location", "gs://my-bucket/tmp", "--dry_run", "true",
        "--input", "gs://my-bucket/corpus/*.jsonl", "--queries", "gs://my-bucket/pairs/*.parquet",
        "--output", "gs://my-bucket/fret/given", "--llm_serve", "/models/qwen", "--llm_model", "qwen",
        "--sdk_container_image", IMAGE,
    ], save_main_session=False)
    pipeline = result.job.proto_pipeline
    top_level = {t.unique_name for t in pipeline.components.transforms.values() if "/" not in t.unique_name}
    assert {"ReadGivenQueries", "JoinGivenToCorpus", "RetrieveCandidates", "RerankAndMine"} <= top_level
    assert "GenerateQueries" not in top_level
    assert "JoinGivenToCorpus" in upstream(pipeline, "RetrieveCandidates/Search/EmbedQueries")


def upstream(pipeline, name: str) -> set[str]:
    """The composite transforms (by name) whose outputs feed transform `name`, transitively."""
    transforms = pipeline.components.transforms
    producer = {pc: t.unique_name for t in transforms.values() for pc in t.outputs.values()}
    seen: set[str] = set()
    todo = [t for t in transforms.values() if t.unique_name == name]
    while todo:
        t = todo.pop()
        for pc in t.inputs.values():
            source = producer.get(pc)
            if source and source not in seen:
                seen.add(source)
                todo.extend(x for x in transforms.values() if x.unique_name == source)
    # a composite's name prefixes its parts: name every level
    return {prefix for s in seen for prefix in ("/".join(s.split("/")[:k]) for k in range(1, len(s.split("/")) + 1))}
