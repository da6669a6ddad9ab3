"""`drive-vlm train vlm`: packed samples, label mask, packed == single-turn, train/save/resume."""

from dataclasses import replace

from drive_vlm_pruned.cameras import NUSCENES_CAMERAS
from drive_vlm_pruned.data.synth import DataOptions, write_dataset
from drive_vlm_pruned.models.llava_onevision import LlavaOnevisionAdapter
from drive_vlm_pruned.pruning import keep_all
from drive_vlm_pruned.training.dataset import load_frames, qa_texts, tokenise_frames
from drive_vlm_pruned.training.model import build_vlm
from drive_vlm_pruned.training.presets import PRESETS
from drive_vlm_pruned.training.samples import (
    FrameTurns,
    IGNORE,
    pack_text,
    packed_mask,
    PackedVLM,
)
from drive_vlm_pruned.training.tokenizer import train_tokenizer
from drive_vlm_pruned.training.vlm import train_vlm, VLMTrainConfig
import numpy as np
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


def make_adapter(frames, attn='sdpa', prompt_format='default'):
    tokenizer = train_tokenizer(qa_texts(frames), SHAPE.vocab_size, prompt_format)
    torch.manual_seed(0)
    model, processor = build_vlm(replace(SHAPE, prompt_format=prompt_format), tokenizer)
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


@pytest.mark.parametrize('attn, prompt_format', [('sdpa', 'default'), ('eager', 'default'),
                                                 ('sdpa', 'named-views')])
def test_packed_turn_logits_equal_the_pipeline_sequence_of_that_turn_alone(data_dir, attn,
                                                                           prompt_format):
    """Each packed turn sees exactly build_inputs' prompt + its answer, as at inference."""
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames, attn, prompt_format)
    assert adapter.attn_implementation == attn
    assert adapter.prompt_format.name == prompt_format
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
            'storage': 'float32', 'train_limit': 2, 'cpu': True,
            'precision': 'no'}  # fp32 on every CPU: 'auto' would follow the machine's bf16
    return VLMTrainConfig(**{**base, **kw})


def weights(run):
    return load_file(run / 'final' / 'model.safetensors')


def test_two_steps_lower_the_loss_then_save_and_resume(data_dir, tmp_path):
    quiet = {'log': lambda _: None}
    whole = train_vlm(config(data_dir, tmp_path / 'whole'), **quiet)
    # Both steps train on the same two frames (train_limit=2, 2 frames a step): loss falls.
    (s1, loss1), (s2, loss2) = whole.history['train']
    assert (s1, s2) == (1, 2) and loss2 < loss1
    assert whole.history['val'] and 0.0 <= whole.history['val'][-1]['exact'] <= 1.0
    # The validation pass also plans greedily through the Pipeline: every val frame of the
    # subset has a planning question, and the baseline it is read beside is scored.
    planning = whole.history['val'][-1]['planning']
    assert planning['items'] == 2 and 0 <= planning['parsed'] <= 2
    assert planning['constant_velocity_3s'] is not None
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


def test_patch_labels_follow_the_encoders_resize_and_padding():
    from drive_vlm_pruned.training.patch_labels import PATCH_CLASSES, patch_labels

    mask = np.ones((64, 128), np.uint8)  # a 2:1 view, road everywhere
    mask[0:16, 96:128] = 2  # a vehicle in the top-right 1/4 x 1/4 of the view
    mask[62, 0] = 3  # one pedestrian pixel, bottom-left corner
    square = patch_labels(mask, size=64, grid=4, pad_square=False)
    assert square.shape == (len(PATCH_CLASSES), 4, 4)
    vehicle = np.zeros((4, 4), bool)
    vehicle[0, 3] = True
    assert (square[1] == vehicle).all()
    assert (square[0] == ~vehicle).all()  # the vehicle hides the road of its patch
    assert square[2].sum() == 1 and square[2][3, 0]  # any pixel of a class marks its patch
    assert not square[3:].any()
    # Padded (DriveMM-style): the view fills rows 32..96 of a 128 square, patch rows 1-2 after
    # the resize, so the grey bands hold no road and the vehicle moves down to patch row 1.
    padded = patch_labels(mask, size=64, grid=4, pad_square=True)
    assert not padded[0][[0, 3]].any() and padded[0][1:3].all()
    assert padded[1][:, 3].tolist() == [False, True, False, False]


def test_second_stage_starts_from_a_checkpoint_and_rescales_its_visual_tokens(
        data_dir, tmp_path, monkeypatch):
    quiet = {'log': lambda _: None}
    first = train_vlm(config(data_dir, tmp_path / 'first'), **quiet)
    with pytest.raises(ValueError, match='--init-from TEXT/final'):
        train_vlm(config(data_dir, tmp_path / 'x', preset='nano'), **quiet)
    # nano's scale terms at the test size, from a checkpoint: rescale, then the norm cap.
    stage = replace(PRESETS['test'], name='test-stage', needs_init=True, recipe=replace(
        PRESETS['test'].recipe, match_visual_scale=True, visual_norm_ratio=2.0, steps=4,
        lr=1e-3))
    monkeypatch.setitem(PRESETS, 'test-stage', stage)
    said = []
    train_vlm(config(data_dir, tmp_path / 'second', preset='test-stage',
                     init_from=first.final_dir, steps=None), log=said.append)
    assert any('visual tokens rescaled' in line for line in said), said
    # The checkpoint holds the same tensors as the first stage's, changed by the second stage,
    # and the first stage's tokenizer.
    before, after = weights(tmp_path / 'first'), weights(tmp_path / 'second')
    assert set(after) == set(before)
    name = next(k for k in after if 'vision_tower' in k and k.endswith('weight'))
    assert not torch.equal(after[name], before[name])
    assert (tmp_path / 'second' / 'final' / 'tokenizer.json').read_text() == \
        (first.final_dir / 'tokenizer.json').read_text()


def test_projector_rescale_matches_the_text_scale_and_keeps_layer_one(data_dir):
    from drive_vlm_pruned.training.dataset import prepare_split
    from drive_vlm_pruned.training.visual_scale import (
        norm_penalty,
        rescale_projector,
        token_norms,
    )

    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    net = PackedVLM(adapter, NUSCENES_CAMERAS)
    split = prepare_split(adapter, data_dir, 'train', data_dir / 'cache-scale', frames,
                          log=lambda _: None)
    images, _ = split.batch([0, 1])
    with torch.no_grad():
        proj = adapter.model.model.multi_modal_projector.linear_2
        proj.weight.mul_(50.0)  # blow the visual tokens up, as from-scratch training did
        proj.bias.mul_(50.0)

    def layer_one():
        feats = adapter.encode(net.pixels(images), 2)
        prefix = adapter.build_inputs(feats, keep_all(feats.tokens.valid_counts(),
                                                      images.device), [net.prefix] * 2)
        with torch.no_grad():
            return adapter.model(inputs_embeds=prefix.inputs_embeds,
                                 position_ids=prefix.position_ids, output_hidden_states=True,
                                 use_cache=False).hidden_states[1], prefix

    before, prefix = layer_one()
    assert norm_penalty(prefix, before, 2.0) > 1.0  # far above twice the text norm
    visual, text = rescale_projector(net, images)
    after_visual, after_text = token_norms(net, images)
    assert visual > 10 * text
    assert after_visual == pytest.approx(text, rel=1e-4)
    assert after_text == pytest.approx(text, rel=1e-4)
    # RMSNorm makes layer 1 scale-free: text rows after it are what they were.
    after, prefix = layer_one()
    assert norm_penalty(prefix, after, 2.0) == 0.0 < norm_penalty(prefix, after, 0.5)
    is_text = torch.ones(before.shape[:2], dtype=torch.bool)
    is_text[torch.arange(2)[:, None], torch.cat(prefix.visual_rows, dim=1)] = False
    torch.testing.assert_close(after[is_text], before[is_text], atol=1e-3, rtol=1e-4)


def test_scale_report_prints_the_norms_and_refuses_other_families(small_model, data_dir, capsys,
                                                                  tmp_path):
    from drive_vlm_pruned.cli.main import main

    assert main(['train', 'scale-report', '--model', str(small_model), '--data', str(data_dir),
                 '--frames', '2']) == 0
    out = capsys.readouterr().out
    assert '2 val frames' in out
    ratio = float(out.split('ratio ')[1].split('x')[0])
    visual = float(out.split('visual tokens at the LLM input: ')[1].split(';')[0])
    assert ratio > 0 and visual > 0
    assert len(out.split('text tokens after LLM layer 1..: ')[1].splitlines()[0].split(',')) == \
        PRESETS['test'].model.text_layers - 1
    from drive_vlm_pruned.models.tiny import make_tiny_model

    other = make_tiny_model('qwen2.5-vl', tmp_path / 'qwen')
    assert main(['train', 'scale-report', '--model', str(other), '--data', str(data_dir)]) == 2
    assert 'LLaVA-OneVision' in capsys.readouterr().err


def test_named_views_preset_writes_a_checkpoint_the_pipeline_prompts_by_view_name(
        data_dir, tmp_path, monkeypatch):
    """The nano prompt: each view's tokens follow its name, in the question's own tokens."""
    from drive_vlm_pruned.models.adapters import load_adapter
    from drive_vlm_pruned.models.loading import LoadSpec

    assert PRESETS['nano'].model.prompt_format == 'named-views'
    assert PRESETS['nano-text'].model == PRESETS['nano'].model  # the stages share one shape
    named = replace(PRESETS['test'], name='test-named',
                    model=replace(SHAPE, prompt_format='named-views'))
    monkeypatch.setitem(PRESETS, 'test-named', named)
    run = train_vlm(config(data_dir, tmp_path / 'run', preset='test-named'), log=lambda _: None)
    adapter = load_adapter(LoadSpec(str(run.final_dir)), log=lambda _: None)
    assert adapter.prompt_format.name == 'named-views'
    question = 'Is there a vehicle in the back left view?'
    pieces = adapter.prompt(question, NUSCENES_CAMERAS).pieces
    tok = adapter.tokenizer
    # Slot v (CAM_BACK_LEFT is 4) comes right after its own name: piece v ends with it.
    assert tok.decode(pieces[4]).endswith('the back left view: ')
    assert tok.decode(pieces[0]).endswith('user\nthe front view: ')
    assert tok.decode(pieces[-1]).startswith('\n' + question)
    # The view words are the same tokens in the label and in the question.
    words = tok(' back left view', add_special_tokens=False).input_ids
    label, asked = list(pieces[4]), tok(question, add_special_tokens=False).input_ids

    def holds(ids):
        return any(ids[i:i + len(words)] == words for i in range(len(ids)))
    assert holds(label) and holds(asked)


def eager_forward(adapter, net, text, images, layers):
    """
    Run the packed sequence through the model with eager attention and its weights.

    Returns ``(prefix, start, segment, out, seen)``: ``seen`` maps each of ``layers`` to the
    inputs its attention module got (view_routing.AttentionInputs), for the recomputed scores.
    """
    from drive_vlm_pruned.training.view_routing import AttentionInputs

    batch = images.shape[0]
    feats = adapter.encode(net.pixels(images), batch)
    prefix = adapter.build_inputs(feats, keep_all(feats.tokens.valid_counts(), 'cpu'),
                                  [net.prefix] * batch)
    start = prefix.full_length[0]
    embeds = torch.cat([prefix.inputs_embeds, adapter.embed(text.ids)], dim=1)
    positions = torch.cat([prefix.position_ids, start + text.offsets], dim=1)
    segment = torch.cat([torch.zeros_like(prefix.position_ids), text.segment], dim=1)
    seen = {k: AttentionInputs(adapter.decoder_layers[k].self_attn) for k in layers}
    try:
        out = adapter.model(inputs_embeds=embeds, position_ids=positions, use_cache=False,
                            attention_mask=packed_mask(segment, 'eager', embeds.dtype),
                            output_attentions=True)
    finally:
        for hook in seen.values():
            hook.close()
    return prefix, start, segment, out, seen


def test_asked_view_finds_the_one_camera_a_question_names():
    from drive_vlm_pruned.training.view_routing import asked_view

    names = NUSCENES_CAMERAS
    assert asked_view('Is there a sign in the back view?', names) == 3
    assert asked_view('How many pedestrians are in the back left view?', names) == 4
    assert asked_view('What is the nearest object in the front view, and how far is it from '
                      'the ego vehicle?', names) == 0
    assert asked_view('What are the important objects in the current scene?', names) == -1


@pytest.mark.parametrize('prompt_format', ['default', 'named-views'])
def test_routing_loss_is_the_attention_the_model_pays_the_named_view(data_dir, prompt_format):
    """The recomputed scores equal eager attention's weights for that layer, head and row."""
    from drive_vlm_pruned.training.samples import _named_view_keys, answer_rows
    from drive_vlm_pruned.training.view_routing import attention_probs, routing_loss

    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames, 'eager', prompt_format)
    turns = tokenise_frames(adapter, frames)
    assert any(t.view >= 0 for f in turns for t in f.turns)
    net = PackedVLM(adapter, NUSCENES_CAMERAS)
    text = pack_text(turns, adapter.pad_token_id)
    images = torch.randint(0, 256, (2, 6, *adapter.image_shape), dtype=torch.uint8)
    layer, head = 1, 3
    with torch.no_grad():
        prefix, start, segment, out, seen = eager_forward(adapter, net, text, images, [layer])
        seen = seen[layer]
        frame, row, turn = answer_rows(text)
        view = torch.tensor(text.views)[turn]
        # The keys the training forward uses (below, rebuilt by hand for each row).
        mask_of, named_of = _named_view_keys(frame, start + row, turn, text, prefix, segment)
        checked = 0
        for i, (f, r, v) in enumerate(zip(frame.tolist(), (start + row).tolist(),
                                          view.tolist())):
            if v < 0:
                assert not mask_of[i].any()  # a turn that names no camera is left alone
                continue
            keys = torch.arange(segment.shape[1])
            allowed = ((segment[f] == 0) | (segment[f] == segment[f, r])) & (keys <= r)
            target = torch.zeros_like(allowed)
            target[prefix.visual_rows[v][f]] = True
            probs = attention_probs(seen, torch.tensor([f]), torch.tensor([r]), allowed[None])
            torch.testing.assert_close(probs[0], out.attentions[layer][f, :, r], atol=1e-6,
                                       rtol=1e-4)
            weights = out.attentions[layer][f, head, r]
            expected = -torch.log(weights[target].sum())
            torch.testing.assert_close(routing_loss(probs, head, target[None]), expected,
                                       atol=1e-5, rtol=1e-4)
            assert weights[~allowed].sum() < 1e-6  # the mask the loss uses is the model's
            assert torch.equal(mask_of[i], allowed) and torch.equal(named_of[i], target)
            checked += 1
        assert checked > 0


def test_route_loss_trains_with_the_answer_loss(data_dir, tmp_path, monkeypatch):
    routed = replace(PRESETS['test'], name='test-routed', recipe=replace(
        PRESETS['test'].recipe, route_loss=1.0, route_at=(1, 0), steps=4, lr=1e-2))
    monkeypatch.setitem(PRESETS, 'test-routed', routed)
    said = []
    run = train_vlm(config(data_dir, tmp_path / 'run', preset='test-routed', steps=None),
                    log=said.append)
    assert any('view routing: LLM layer 1, query head 0' in line for line in said), said
    aux = [loss for _, loss in run.history['aux']]
    assert len(aux) == 4 and aux[-1] < aux[0]
    monkeypatch.setitem(PRESETS, 'test-routed',
                        replace(routed, recipe=replace(routed.recipe, route_at=(5, 0))))
    with pytest.raises(ValueError, match='route layer 5'):
        train_vlm(config(data_dir, tmp_path / 'bad', preset='test-routed', steps=None),
                  log=said.append)


def test_asked_class_finds_the_one_object_class_a_question_names():
    from drive_vlm_pruned.training.patch_labels import PATCH_CLASSES
    from drive_vlm_pruned.training.view_routing import asked_class

    assert PATCH_CLASSES[asked_class('Is there a sign in the back view?')] == 'sign'
    assert PATCH_CLASSES[asked_class('How many pedestrians are in the back left view?')] == \
        'pedestrian'
    assert PATCH_CLASSES[asked_class('Is there a barrier in the front view?')] == 'barrier'
    assert asked_class('What is the nearest object in the front view?') == -1
    assert asked_class('What are the important objects in the current scene?') == -1


def test_object_routing_targets_the_named_views_tokens_of_the_asked_class(data_dir):
    """The object loss's keys, rebuilt by hand from the patch labels and the prefix layout."""
    from drive_vlm_pruned.training.samples import (
        _named_view_keys,
        _object_keys,
        answer_rows,
        object_targets,
    )

    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames, 'eager', 'named-views')
    turns = tokenise_frames(adapter, frames)
    text = pack_text(turns, adapter.pad_token_id)
    assert any(c >= 0 for c in text.classes) and any(c < 0 for c in text.classes)
    net = PackedVLM(adapter, NUSCENES_CAMERAS)
    images = torch.randint(0, 256, (2, 6, *adapter.image_shape), dtype=torch.uint8)
    with torch.no_grad():
        feats = adapter.encode(net.pixels(images), 2)
        prefix = adapter.build_inputs(feats, keep_all(feats.tokens.valid_counts(), 'cpu'),
                                      [net.prefix] * 2)
    start = prefix.full_length[0]
    segment = torch.cat([torch.zeros_like(prefix.position_ids), text.segment], dim=1)
    grid = int(round(len(prefix.visual_rows[0][0]) ** 0.5))
    labels = torch.rand(2, 6, 5, grid, grid, generator=torch.Generator().manual_seed(0)) < 0.05
    keys = _object_keys(prefix, labels, segment)
    expected = torch.zeros_like(keys)
    for b in range(2):
        for v in range(6):
            for n, key in enumerate(prefix.visual_rows[v][b].tolist()):
                expected[b, :, key] = labels[b, v, :, n // grid, n % grid]
    assert torch.equal(keys, expected) and keys.any()
    frame, row, turn = answer_rows(text)
    _, named = _named_view_keys(frame, start + row, turn, text, prefix, segment)
    classes = torch.tensor(text.classes)[turn]
    present, share = object_targets(named, classes, keys[frame], torch.full_like(classes, -1))
    found = absent = 0
    for i, (f, t) in enumerate(zip(frame.tolist(), turn.tolist())):
        cls, view = text.classes[t], text.views[t]
        if cls < 0 or view < 0:
            assert not present[i].any()  # nothing to find: no class token is a target
            continue
        hand = torch.zeros(segment.shape[1], dtype=torch.bool)
        hand[prefix.visual_rows[view][f]] = labels[f, view, cls].flatten()
        assert torch.equal(present[i], hand)
        if hand.any():
            found += 1
            assert share[i] == 1.0  # count unknown: all of the mass on the class
        else:
            absent += 1
            assert share[i] == 0.0  # not in that view: all of it on the first prefix token
    assert found and absent


def test_count_aware_object_routing_leaves_the_sink_one_share_per_object(data_dir):
    """Each turn's count is its pair's gt.view_counts; the loss is least at n / (n + 1)."""
    from drive_vlm_pruned.training.patch_labels import PATCH_CLASSES
    from drive_vlm_pruned.training.samples import object_targets
    from drive_vlm_pruned.training.view_routing import routing_loss, share_loss

    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    turns = tokenise_frames(adapter, frames, drills=(4, 3, 0, 0), seed=0)
    counted = 0
    for frame, own in zip(frames, turns):
        for turn in own.turns:
            if turn.view < 0 or turn.object_class < 0:
                assert turn.object_count == -1
                continue
            n = frame.gt.view_counts[NUSCENES_CAMERAS[turn.view]][PATCH_CLASSES[turn.object_class]]
            assert turn.object_count == (-1 if n is None else n)
            counted += n is not None and n > 0
    assert counted
    # keys: 0 the sink, 1-3 the named view's tokens of the class, 4 another class's token
    named = torch.tensor([[False, True, True, True, True]] * 4)
    keys = torch.zeros(4, 2, 5, dtype=torch.bool)
    keys[:, 0, 1:4] = True
    keys[:, 1, 4] = True
    keys[3, 0] = False  # the labels show none of the class in that view
    present, share = object_targets(named, torch.tensor([0, 0, 0, 0]), keys,
                                    torch.tensor([2, 0, -1, 3]))
    assert present[0].tolist() == [False, True, True, True, False] and not present[3].any()
    torch.testing.assert_close(share, torch.tensor([2 / 3, 0.0, 1.0, 0.0]))
    masses = torch.linspace(0.05, 0.95, 19)  # mass on the class tokens; the sink has the rest
    probs = torch.stack([torch.tensor([1 - m, m / 3, m / 3, m / 3, 0.0]) for m in masses])
    sink = torch.zeros_like(present[:1])
    sink[:, 0] = True
    for p in probs[::6]:  # shares 1 and 0: all of the mass on the class, or on the sink
        torch.testing.assert_close(share_loss(p[None, None], 0, present[:1], torch.ones(1)),
                                   routing_loss(p[None, None], 0, present[:1]))
        torch.testing.assert_close(share_loss(p[None, None], 0, present[:1], torch.zeros(1)),
                                   routing_loss(p[None, None], 0, sink))
    for n in (1, 2, 3, 4):
        losses = [share_loss(p[None, None], 0, present[:1], torch.tensor([n / (n + 1)]))
                  for p in probs]
        best = masses[int(torch.stack(losses).argmin())]
        assert abs(best - n / (n + 1)) <= 0.05, (n, best)


def test_object_routing_loss_trains_on_the_label_masks(data_dir, tmp_path, monkeypatch):
    grounded = replace(PRESETS['test'], name='test-grounded', recipe=replace(
        PRESETS['test'].recipe, object_loss=1.0, object_at=(1, 1), steps=4, lr=1e-2))
    monkeypatch.setitem(PRESETS, 'test-grounded', grounded)
    said = []
    run = train_vlm(config(data_dir, tmp_path / 'run', preset='test-grounded', steps=None),
                    log=said.append)
    assert any('object routing: LLM layer 1, query head 1' in line for line in said), said
    aux = [loss for _, loss in run.history['aux']]
    assert len(aux) == 4 and aux[-1] < aux[0]
    monkeypatch.setitem(PRESETS, 'test-grounded',
                        replace(grounded, recipe=replace(grounded.recipe, object_count=True)))
    run = train_vlm(config(data_dir, tmp_path / 'counting', preset='test-grounded', steps=None),
                    log=said.append)
    assert any('count-aware' in line for line in said), said
    aux = [loss for _, loss in run.history['aux']]
    assert len(aux) == 4 and aux[-1] < aux[0]
    monkeypatch.setitem(PRESETS, 'test-grounded',
                        replace(grounded, recipe=replace(grounded.recipe, object_at=(7, 1))))
    with pytest.raises(ValueError, match='object-routing layer 7'):
        train_vlm(config(data_dir, tmp_path / 'bad', preset='test-grounded', steps=None),
                  log=said.append)


def test_drill_turns_follow_the_frames_own_qa_and_need_view_counts(data_dir):
    """Camera drills need gt.view_counts; ego-motion drills (data/plan_drill.py) need nothing."""
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    plain = tokenise_frames(adapter, frames)
    drilled = tokenise_frames(adapter, frames, drills=(4, 3, 0, 0), seed=0)
    for frame, own, more in zip(frames, plain, drilled):
        assert more.turns[:len(own.turns)] == own.turns  # the frame's own QA first, unchanged
        extra = more.turns[len(own.turns):]
        families = [t.family for t in extra]
        clear = [n for by_label in frame.gt.view_counts.values() for n in by_label.values()
                 if n is not None]
        countable = [n for n in clear if n <= 6]
        assert families == ['exists'] * min(4, len(clear)) + ['count'] * min(3, len(countable))
        assert all(t.view >= 0 and t.object_class >= 0 for t in extra)  # routing reads them
    assert tokenise_frames(adapter, frames, drills=(4, 3, 0, 0), seed=0) == drilled  # seeded
    planned = tokenise_frames(adapter, frames, drills=(4, 3, 2, 0), seed=0)
    for camera, more in zip(drilled, planned):
        assert more.turns[:len(camera.turns)] == camera.turns  # planning drills come last
        assert [t.family for t in more.turns[len(camera.turns):]] == ['planning_trajectory'] * 2
    chosen = tokenise_frames(adapter, frames, drills=(4, 3, 2, 3), seed=0)
    for motion, more in zip(planned, chosen):
        assert more.turns[:len(motion.turns)] == motion.turns  # each drill kind its own draw
        assert [t.family for t in more.turns[len(motion.turns):]] == ['behavior_mc'] * 3
    bare = [replace(f, gt=replace(f.gt, view_counts={})) for f in frames]
    motion_only = tokenise_frames(adapter, bare, drills=(0, 0, 1, 1))
    assert all([t.family for t in f.turns[-2:]] == ['planning_trajectory', 'behavior_mc']
               for f in motion_only)
    with pytest.raises(ValueError, match='no gt.view_counts.*data synth'):
        tokenise_frames(adapter, bare, drills=(4, 3, 0, 0))


def test_family_weight_raises_that_familys_share_of_the_answer_loss(data_dir):
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    turns = tokenise_frames(adapter, frames)
    plain = pack_text(turns, adapter.pad_token_id)
    family = plain.families[0]
    weighted = pack_text(turns, adapter.pad_token_id, {family: 5.0})
    owner = weighted.turn_of_row
    for t, name in enumerate(plain.families):
        turn_weight = weighted.weight[owner == t].sum().item()
        assert turn_weight == pytest.approx(5.0 if name == family else 1.0)
        assert plain.weight[owner == t].sum().item() == pytest.approx(1.0)
    heavy = plain.families.count(family)
    assert plain.norm.item() == pytest.approx(len(plain.families))
    assert weighted.norm.item() == pytest.approx(len(plain.families) + 4.0 * heavy)
    # The loss stays a weighted mean: equal token losses give the same loss either way.
    ones = (plain.labels != IGNORE).float()
    assert (ones * plain.weight).sum() / plain.norm == pytest.approx(1.0)
    assert (ones * weighted.weight).sum() / weighted.norm == pytest.approx(1.0)


def test_family_weight_for_a_family_no_turn_has_is_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match='no train turn has the family planning_trajectori'):
        train_vlm(config(data_dir, tmp_path / 'run',
                         family_weights=(('planning_trajectori', 8.0),)), log=lambda _: None)


@pytest.mark.parametrize('bad', ['planning_trajectory', 'planning_trajectory=0', '=8',
                                 'planning_trajectory=x'])
def test_family_weight_flag_names_its_form_when_malformed(bad):
    import argparse

    from drive_vlm_pruned.cli.train import _family_weight

    assert _family_weight('planning_trajectory=8') == ('planning_trajectory', 8.0)
    with pytest.raises(argparse.ArgumentTypeError, match='FAMILY=W with W > 0'):
        _family_weight(bad)


def test_language_stage_reads_the_turns_alone_and_no_view(data_dir):
    frames = load_frames(data_dir, 'train')
    adapter = make_adapter(frames)
    turns = tokenise_frames(adapter, frames)
    text = pack_text(turns, adapter.pad_token_id)
    language = PackedVLM(adapter, NUSCENES_CAMERAS, text_only=True)
    views = PackedVLM(adapter, NUSCENES_CAMERAS)
    shape = (len(frames), 6, 3, SHAPE.image_size, SHAPE.image_size)
    black = torch.zeros(shape, dtype=torch.uint8)
    noise = torch.randint(0, 256, shape, dtype=torch.uint8)
    with torch.no_grad():
        out, other = language(black, text), language(noise, text)
        seen = views(noise, text)
        # the first turn packed by itself gives the same logits: a turn sees only itself
        alone = language(black[:1], pack_text([FrameTurns(turns[0].turns[:1])],
                                              adapter.pad_token_id))
    assert out.loss.item() == other.loss.item()  # no pixel reaches it
    assert abs(seen.loss.item() - out.loss.item()) > 1e-4  # and no visual token
    first = (out.turn_of_row == 0) & (out.labels != IGNORE)
    assert torch.allclose(out.logits[first], alone.logits[alone.labels != IGNORE], atol=2e-5)


def test_language_stage_trains_refuses_view_terms_and_hands_over_to_the_vlm_stage(
        data_dir, tmp_path, monkeypatch):
    text = replace(PRESETS['test'], name='test-text', recipe=replace(
        PRESETS['test'].recipe, text_only=True, steps=4, lr=1e-2))
    monkeypatch.setitem(PRESETS, 'test-text', text)
    run = train_vlm(config(data_dir, tmp_path / 'text', preset='test-text', steps=None),
                    log=lambda _: None)
    losses = [loss for _, loss in run.history['train']]
    assert losses[-1] < losses[0]
    planning = run.history['val'][-1]['planning']
    assert planning['items'] > 0  # the text-only planning check ran on the val frames
    assert not list((tmp_path / 'text' / 'cache').glob('*.u8'))  # no view was rendered
    more = train_vlm(config(data_dir, tmp_path / 'new' / 'text', preset='test-text', steps=None,
                            init_from=run.final_dir), log=lambda _: None)
    assert (more.final_dir / 'model.safetensors').is_file()  # a fresh --out, from a checkpoint
    before = load_file(run.final_dir / 'model.safetensors')
    vlm = train_vlm(config(data_dir, tmp_path / 'vlm', init_from=run.final_dir),
                    log=lambda _: None)
    after = load_file(vlm.final_dir / 'model.safetensors')
    llm = [k for k in before if 'language_model' in k]
    assert llm and any(not torch.equal(before[k], after[k]) for k in llm)
    with pytest.raises(ValueError, match='--route-loss need the views'):
        train_vlm(config(data_dir, tmp_path / 'bad', preset='test-text', steps=None,
                         route_loss=1.0), log=lambda _: None)
    assert not (tmp_path / 'bad').exists()  # refused before any work
