"""`drive-vlm train vlm`: packed samples, label mask, packed == single-turn, train/save/resume."""

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data.synth import DataOptions, write_dataset
from drive_vlm_pruned.models.llava_onevision import LlavaOnevisionAdapter
from drive_vlm_pruned.pruning import keep_all
from drive_vlm_pruned.training.dataset import load_frames, qa_texts, tokenise_frames
from drive_vlm_pruned.training.model import build_vlm
from drive_vlm_pruned.training.presets import PRESETS
from drive_vlm_pruned.training.samples import (
    IGNORE,
    pack_text,
    packed_mask,
    PackedVLM,
)
from drive_vlm_pruned.training.tokenizer import train_tokenizer
from drive_vlm_pruned.training.vlm import train_vlm, TrainConfig
import pytest
from safetensors.torch import load_file
import torch

SHAPE = PRESETS['test'].model


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """Write a small real `data synth` set: 2 train frames (1 scene), 2 val frames."""
    out = tmp_path_factory.mktemp('drive')
    for split in ('train', 'val'):
        write_dataset(out, DataOptions(scenes=1, frames_per_scene=2, split=split, width=128,
                                       height=72))
    return out


def make_adapter(frames, attn='sdpa'):
    tokenizer = train_tokenizer(qa_texts(frames), SHAPE.vocab_size)
    torch.manual_seed(0)
    model, processor = build_vlm(SHAPE, tokenizer)
    model.set_attn_implementation(attn)
    return LlavaOnevisionAdapter(model.eval(), tokenizer, processor, torch.device('cpu'),
                                 torch.float32)


def test_label_mask_covers_exactly_each_answer_and_its_end_of_turn(data_dir):
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    turns = tokenise_frames(adapter, frames)
    text = pack_text(turns, adapter.pad_token_id)
    eos = adapter.tokenizer.eos_token_id
    for b, frame in enumerate(frames):
        labels = text.labels[b]
        for t, qa in enumerate(frame.qa):
            owner = text.turn_of_row[b] == sum(len(f.qa) for f in frames[:b]) + t
            rows = labels[owner]
            answer = adapter.tokenizer(qa.answer, add_special_tokens=False).input_ids
            # The turn's rows predict nothing until its last prompt token, then the answer.
            target = rows[rows != IGNORE].tolist()
            assert target == answer + [eos]
            prompt_len = len(turns[b].turns[t].prompt)
            assert (rows[:prompt_len - 1] == IGNORE).all()
            assert adapter.tokenizer.decode(target, skip_special_tokens=True) == qa.answer
        assert (labels != IGNORE).sum() == sum(len(t.answer) for t in turns[b].turns)
    # Padding rows of the shorter frame carry no label and no weight.
    pad = text.segment == -1
    assert (text.labels[pad] == IGNORE).all() and (text.weight[pad] == 0).all()


def test_mask_lets_a_turn_see_the_prefix_and_itself_only():
    segment = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    allowed = packed_mask(segment, 'sdpa', torch.float32)[0, 0]
    assert allowed[3].tolist() == [True, True, True, True, False, False, False]
    assert allowed[5].tolist() == [True, True, False, False, True, True, False]
    assert allowed[1].tolist() == [True, True, False, False, False, False, False]
    assert allowed[6].tolist() == [False] * 6 + [True]  # padding: only itself
    additive = packed_mask(segment, 'eager', torch.float32)[0, 0]
    assert ((additive == 0) == allowed).all()
    with pytest.raises(ValueError, match='sdpa or eager'):
        packed_mask(segment, 'flash_attention_2', torch.float32)


@pytest.mark.parametrize('attn', ['sdpa', 'eager'])
def test_packed_turn_logits_equal_the_pipeline_sequence_of_that_turn_alone(data_dir, attn):
    """Each packed turn sees exactly build_inputs' prompt + its answer, as at inference."""
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames, attn)
    assert adapter.attn_implementation == attn
    turns = tokenise_frames(adapter, frames)
    net = PackedVLM(adapter, NUSCENES_CAMERAS)
    images = torch.randint(0, 256, (2, 6, *adapter.image_shape), dtype=torch.uint8)
    text = pack_text(turns, adapter.pad_token_id)
    with torch.no_grad():
        packed = net(images, text)
        offset = 0
        for b, frame in enumerate(frames):
            feats = adapter.encode(net.pixels(images[b:b + 1]), 1)
            kept = keep_all(feats.tokens.valid_counts(), adapter.device)
            for t, qa in enumerate(frame.qa):
                inputs = adapter.build_inputs(feats, kept, [adapter.prompt(qa.question,
                                                                           NUSCENES_CAMERAS)])
                answer = list(turns[b].turns[t].answer)
                embeds = torch.cat([inputs.inputs_embeds,
                                    adapter.embed(torch.tensor([answer[:-1]]))], dim=1)
                steps = torch.arange(len(answer) - 1)[None]
                positions = torch.cat([inputs.position_ids, inputs.next_position[:, None] + steps],
                                      dim=1)
                alone = adapter.model(inputs_embeds=embeds, position_ids=positions,
                                      attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long)
                                      ).logits[0, -len(answer):]
                rows = (packed.turn_of_row[b] == offset + t) & (packed.labels[b] != IGNORE)
                assert rows.sum() == len(answer)
                torch.testing.assert_close(packed.logits[b][rows], alone, atol=2e-5, rtol=1e-4)
            offset += len(frame.qa)


def config(data_dir, out, **kw):
    base = {'data': data_dir, 'out': out, 'preset': 'test', 'steps': 2, 'frames_per_step': 2,
            'storage': 'float32', 'train_limit': 2, 'cpu': True}
    return TrainConfig(**{**base, **kw})


def weights(run):
    return load_file(run / 'final' / 'model.safetensors')


def test_two_steps_lower_the_loss_then_save_and_resume(data_dir, tmp_path):
    quiet = {'log': lambda _: None}
    whole = train_vlm(config(data_dir, tmp_path / 'whole'), **quiet)
    # Both steps train on the same two frames (train_limit=2, 2 frames a step): loss falls.
    (s1, loss1), (s2, loss2) = whole.history['train']
    assert (s1, s2) == (1, 2) and loss2 < loss1
    assert whole.history['val'] and 0.0 <= whole.history['val'][-1]['exact'] <= 1.0
    assert (tmp_path / 'whole' / 'curves.png').stat().st_size > 1000
    expected = weights(tmp_path / 'whole')

    # A run stopped by its time budget after step 1 saves; --resume continues at step 2 (model,
    # AdamW and schedule restored) and ends with the weights of the uninterrupted run.
    cut = train_vlm(config(data_dir, tmp_path / 'cut', max_minutes=1e-9), **quiet)
    assert cut.stopped_by_time and cut.step == 1
    assert (tmp_path / 'cut' / 'checkpoints' / 'step-1').is_dir()
    rest = train_vlm(config(data_dir, tmp_path / 'cut', resume=True), **quiet)
    assert rest.step == 2 and [s for s, _ in rest.history['train']] == [1, 2]
    for name, tensor in weights(tmp_path / 'cut').items():
        torch.testing.assert_close(tensor, expected[name], atol=1e-6, rtol=1e-5)

    # --stop-at 1: the same seed reruns step 1 to the same loss, and the run resumes.
    first = train_vlm(config(data_dir, tmp_path / 'first', stop_at=1), **quiet)
    assert first.stopped_at_step and not first.stopped_by_time and first.step == 1
    assert first.history['train'][0][1] == pytest.approx(loss1, rel=1e-6)
    assert (tmp_path / 'first' / 'checkpoints' / 'step-1').is_dir()

    with pytest.raises(ValueError, match='--resume'):
        train_vlm(config(data_dir, tmp_path / 'cut'), **quiet)
    with pytest.raises(ValueError, match='no step-N checkpoint'):
        train_vlm(config(data_dir, tmp_path / 'new', resume=True), **quiet)
