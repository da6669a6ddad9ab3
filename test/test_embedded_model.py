"""The shipped embedded checkpoint: found, loaded offline through load_adapter, and it answers."""

import json

from drive_vlm_pruned.data.drivelm import load_camera_set, load_drivelm
from drive_vlm_pruned.data.synth import DataOptions, write_dataset
from drive_vlm_pruned.eval.baselines import fit_question_prior
from drive_vlm_pruned.eval.families import answers_match
from drive_vlm_pruned.models.adapters import load_adapter
from drive_vlm_pruned.models.embedded import check_embedded, embedded_model_dir
from drive_vlm_pruned.models.loading import LoadSpec
from drive_vlm_pruned.pipeline.pipeline import Pipeline, RuntimeSettings
import pytest

# A small fixed set: 4 test-range scenes x 5 key frames (60 exists, 40 count questions), and
# the question prior fit on a separate 20-scene sample of the train range. A model that reads
# only the question scores the prior's accuracy on these items; the shipped model must beat it
# on both camera families by MARGIN, more than the binomial noise of 40-60 items (about 8 points
# at 2 standard errors) allows a prior-only answerer. The model card has the full test split.
EVAL_SCENES, PRIOR_SCENES, FRAMES_PER_SCENE = 4, 20, 5
MARGIN = 0.15


@pytest.fixture(scope='module')
def adapter(monkeypatch_module):
    monkeypatch_module.setenv('HF_HUB_OFFLINE', '1')  # nothing may come from the network
    monkeypatch_module.setenv('TRANSFORMERS_OFFLINE', '1')
    return load_adapter(LoadSpec(str(embedded_model_dir())), log=lambda _: None)


@pytest.fixture(scope='module')
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_shipped_checkpoint_is_small_complete_and_a_real_llava_onevision():
    directory = embedded_model_dir()
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    assert size <= 25 * 2**20
    config = json.loads((directory / 'config.json').read_text())
    assert config['model_type'] == 'llava_onevision'
    vision = config['vision_config']
    assert (vision['image_size'] // vision['patch_size']) ** 2 >= 196
    assert (directory / 'README.md').is_file()
    vocab = json.loads((directory / 'tokenizer.json').read_text())['model']['vocab']
    assert len(vocab) > 512  # a tokenizer trained on the QA vocabulary, not the toy one


def test_it_loads_offline_in_float32_and_has_196_tokens_per_view(adapter):
    assert adapter.family == 'llava-onevision'
    assert next(adapter.model.parameters()).dtype.is_floating_point
    assert str(next(adapter.model.parameters()).dtype) == 'torch.float32'
    ids = adapter.tokenizer('How many cars are in the front view?', add_special_tokens=False)
    assert len(ids.input_ids) <= 10  # QA words are whole tokens


@pytest.fixture(scope='module')
def camera_scores(adapter, tmp_path_factory) -> dict[str, tuple[int, float, float]]:
    """Per family: items, the model's accuracy and the question prior's, on the fixed set."""
    out = tmp_path_factory.mktemp('camera-set')
    write_dataset(out, DataOptions(scenes=EVAL_SCENES, frames_per_scene=FRAMES_PER_SCENE,
                                   split='test'))
    write_dataset(out, DataOptions(scenes=PRIOR_SCENES, frames_per_scene=FRAMES_PER_SCENE,
                                   split='train'))
    prior = fit_question_prior(load_drivelm(out, split='train'))
    pipeline = Pipeline(adapter)
    hits = {'exists': [], 'count': []}
    for frame in load_drivelm(out, split='test'):
        items = [qa for qa in frame.qa if qa.family in hits]
        camera_set = load_camera_set(frame)
        results = pipeline.run_batch([camera_set] * len(items), [RuntimeSettings(
            keep_ratio=1.0, question=qa.question, max_new_tokens=8) for qa in items])
        for qa, result in zip(items, results):
            assert result.tokens_before == [196] * 6
            hits[qa.family].append((answers_match(result.answer, qa.answer),
                                    prior.get(qa.question) == qa.answer))
    return {family: (len(pairs), sum(m for m, _ in pairs) / len(pairs),
                     sum(p for _, p in pairs) / len(pairs)) for family, pairs in hits.items()}


def test_it_answers_camera_questions_at_least_as_well_as_the_question_alone(camera_scores):
    # A broken load, prompt, image or decode path answers far below the prior (a model that
    # returns malformed or constant answers scores near zero on count): this is that guard.
    for family, (items, model, alone) in camera_scores.items():
        assert items >= 40 and model >= alone, (family, items, model, alone)


def test_it_answers_camera_questions_better_than_the_question_alone_can(camera_scores):
    for family, (items, model, alone) in camera_scores.items():
        assert model >= alone + MARGIN, (family, items, model, alone)


def test_a_missing_checkpoint_gets_an_error_that_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match='config.json.*train vlm'):
        check_embedded(tmp_path)
