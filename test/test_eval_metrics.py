"""Each eval metric against values computed by hand on small cases."""

from pathlib import Path
import shutil

from drive_vlm_pruned.data.drivelm import AgentBox, FrameGT, KeyFrame, QA
from drive_vlm_pruned.eval.baselines import (
    constant_velocity,
    constant_velocity_answer,
    fit_majority,
    question_type,
)
from drive_vlm_pruned.eval.families import answers_match
from drive_vlm_pruned.eval.language import (
    language_score,
    language_scores,
    simple_tokenize,
    tokenize,
)
from drive_vlm_pruned.eval.metrics_drivelm import (
    DriveLMScores,
    exact_match,
    final_score,
    final_score_no_gpt,
    final_weights,
    gate,
    graph_admits,
    match_points,
    score_drivelm,
    ScoredQA,
)
from drive_vlm_pruned.eval.planning import PlanningTruth, score_trajectory
from drive_vlm_pruned.eval.scoring import score_column
import pytest


def test_accuracy_is_exact_string_equality():
    assert exact_match('B', 'B')
    assert not exact_match('B.', 'B')
    assert not exact_match('yes', 'Yes.')
    assert not exact_match(' B', 'B')


def test_match_f1_uses_l1_below_16_px():
    gt = 'IDs <c1,CAM_FRONT,100.0,100.0> and <c2,CAM_BACK,200.0,200.0>.'
    # L1 9 px: a hit; the second point is far from everything: a false positive
    result = match_points('<c1,CAM_FRONT,105.0,104.0>, <c2,CAM_BACK,300.0,300.0>', gt)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 1, 1)
    assert result.matched == ((100.0, 100.0),)
    assert result.f1 == pytest.approx(0.5, abs=1e-6)  # P = R = 1/2
    # L1 exactly 16 px is not < 16: a miss; 15.9 is a hit
    assert match_points('108.0,108.0', '100.0,100.0').true_positives == 0
    assert match_points('107.9,108.0', '100.0,100.0').true_positives == 1
    # all found, nothing extra: F1 = 1 (minus DriveLM's 1e-8 guards)
    assert match_points(gt, gt).f1 == pytest.approx(1.0, abs=1e-6)
    assert match_points('no objects', gt).f1 == pytest.approx(0.0, abs=1e-6)


def test_match_is_greedy_in_prediction_order_and_uses_up_gt_points():
    gt = '10.0,10.0 24.0,10.0'
    # p1 is 7 px from both: the first GT point wins the tie; p2 is then 22 px from the other
    result = match_points('17.0,10.0 2.0,10.0', gt)
    assert result.matched == ((10.0, 10.0),)
    assert (result.true_positives, result.false_positives, result.false_negatives) == (1, 1, 1)
    # two predictions on one GT point: only one can take it
    twice = match_points('10.0,10.0 11.0,10.0', '10.0,10.0')
    assert (twice.true_positives, twice.false_positives) == (1, 1)
    assert twice.f1 == pytest.approx(2 * 0.5 * 1 / 1.5, abs=1e-6)


def test_match_reads_unsigned_decimal_pairs_only_and_drops_an_odd_last_number():
    # integers are not points; the sign is not read; 7.5 is odd and dropped
    result = match_points('3 cars at -100.0,100.0 and 7.5', '100.0,100.0')
    assert (result.true_positives, result.false_positives) == (1, 0)


def _item(n, frame, question, truth, answer, tags):
    return ScoredQA(f'{frame}_{n}', question, truth, answer, tuple(tags), frame)


def test_graph_gating_scores_only_questions_about_matched_objects():
    truth0 = 'IDs <c1,CAM_FRONT,100.0,100.0> and <c2,CAM_BACK,500.0,300.0>.'
    items = [
        _item(0, 'f1', 'What are the important objects?', truth0,
              'IDs <c1,CAM_FRONT,101.0,99.0>.', [2]),  # found c1 only
        _item(1, 'f1', 'Status of <c1,CAM_FRONT,100.0,100.0>?', 'B', 'B', [0]),
        _item(2, 'f1', 'Status of <c2,CAM_BACK,500.0,300.0>?', 'A', 'A', [0]),  # gated out
        _item(3, 'f1', 'Predict the behavior of the ego vehicle.', 'C', 'D', [0]),  # no points
        # ego-history metres are not object points: only c-tags gate (module doc)
        _item(4, 'f1', 'Positions [-15.31, 0.82], [-5.11, 0.09]. Safe action?', 'Stop.', 'Stop.',
              [0]),
        _item(0, 'f2', 'Is <c1,CAM_BACK,1.0,2.0> a sign?', 'No.', 'No.', [0]),  # first: scored
        _item(1, 'f2', 'Is <c1,CAM_BACK,1.0,2.0> moving?', 'No.', 'No.', [0]),  # graph empty
    ]
    kept, dropped = gate(items)
    assert [i.id for i in kept] == ['f1_0', 'f1_1', 'f1_3', 'f1_4', 'f2_0']
    assert dropped == 2
    assert graph_admits('no points here', set())
    scores = score_drivelm(items, tokenizer='simple')
    assert scores.accuracy == pytest.approx(3 / 4)  # f1_1, f1_4, f2_0 right, f1_3 wrong
    assert scores.counts['gated_out'] == 2 and scores.counts['accuracy'] == 4


def test_final_score_weights_without_gpt_are_renormalised():
    scores = DriveLMScores(accuracy=0.5, language_score=0.3, match_f1=60.0)
    assert final_weights(scores) == pytest.approx({'language': 1 / 3, 'match': 1 / 3,
                                                   'accuracy': 1 / 3})
    # (0.2 * 0.3 + 0.2 * 0.6 + 0.2 * 0.5) / 0.6
    assert final_score_no_gpt(scores) == pytest.approx(0.28 / 0.6)
    no_match = DriveLMScores(accuracy=0.5, language_score=0.3)
    assert final_score_no_gpt(no_match) == pytest.approx((0.06 + 0.1) / 0.4)
    assert final_score_no_gpt(DriveLMScores()) is None
    # the official four-term score, for reference: 0.4 * 0.5 + 0.06 + 0.12 + 0.1
    assert final_score(50.0, 0.3, 60.0, 0.5) == pytest.approx(0.48)


def test_language_score_composes_bleu_rouge_cider_as_drivelm():
    scores = {'Bleu_1': 0.8, 'Bleu_2': 0.6, 'Bleu_3': 0.4, 'Bleu_4': 0.2, 'ROUGE_L': 0.6,
              'CIDEr': 1.5}
    assert language_score(scores) == pytest.approx(0.5 / 3 + 0.6 / 3 + 0.15 / 3)


def test_language_metrics_come_from_pycocoevalcap_on_a_hand_case():
    # 3 of 4 unigrams match, same length: BLEU-1 = 3/4; LCS 3 of 4: ROUGE-L = 3/4
    scores = language_scores(['The car is red.'], ['The car is blue.'], 'simple')
    assert scores['Bleu_1'] == pytest.approx(0.75, abs=1e-6)
    assert scores['ROUGE_L'] == pytest.approx(0.75, abs=1e-6)
    # bigrams: 2 of 3 match: BLEU-2 = sqrt(3/4 * 2/3)
    assert scores['Bleu_2'] == pytest.approx((0.75 * 2 / 3) ** 0.5, abs=1e-6)
    same = language_scores(['Go straight.', 'Stop now.'], ['Go straight.', 'Stop now.'],
                           'simple')
    assert same['ROUGE_L'] == pytest.approx(1.0)
    assert language_scores([], [], 'simple') is None


def test_simple_tokenizer_follows_ptb_rules():
    assert simple_tokenize("The object's a sign, so don't stop (keep going).") == \
        "the object 's a sign so do n't stop -lrb- keep going -rrb-"
    assert simple_tokenize('[1.25, -0.10], 10-20 m; 1,000 cars!') == \
        '-lsb- 1.25 -0.10 -rsb- 10-20 m 1,000 cars'


SENTENCES = [
    'The ego vehicle is going straight. The ego vehicle is driving fast.',
    'The ego vehicle is slightly steering to the left. The ego vehicle is driving slowly.',
    'Keep going at the same speed, decelerate gradually without braking.',
    "There's a red car to the front of the ego vehicle, and it isn't moving.",
    '[1.25, 0.00], [2.50, -0.10], [3.75, 0.12], [5.00, 0.30], [6.25, 0.41], [7.50, 0.52]',
    'Yes.', 'No.', 'B', 'Brake suddenly / turn left; accelerate (not safe)!', '',
]


@pytest.mark.skipif(shutil.which('java') is None, reason='the PTB tokenizer needs Java')
def test_simple_tokenizer_equals_ptb_on_drivelm_style_sentences():
    assert tokenize(SENTENCES, 'simple') == tokenize(SENTENCES, 'ptb')


def test_family_exact_match_normalises_and_allows_number_tolerance():
    assert answers_match('Yes.', 'yes')
    assert answers_match('B', 'B.')
    assert answers_match('3', 'three')
    assert answers_match('There are 3.004 cars.', 'There are 3 cars')
    assert not answers_match('3.2', '3')
    assert answers_match('Car, 10-20 m', 'car 10-20 m.')
    assert not answers_match('Car, 20-30 m', 'Car, 10-20 m')
    assert not answers_match('Truck, 10-20 m', 'Car, 10-20 m')
    assert not answers_match('3 4', '3')


def test_planning_l2_is_cumulative_and_collision_counts_steps_that_hit():
    gt = [(4.0 * (k + 1), 0.0) for k in range(6)]
    pred = [(x, 1.0 * (k + 1)) for k, (x, _) in enumerate(gt)]  # errors 1, 2, ..., 6 m
    # a 4 m x 2 m box 4 m left of the GT path at step 4 (index 3): on the predicted path
    box = (16.0, 4.0, 0.0, 4.0, 2.0)
    truth = PlanningTruth.from_step_boxes(gt, [[], [], [], [box], [], []])
    score = score_trajectory(pred, truth)
    assert score.l2 == {'1s': 1.5, '2s': 2.5, '3s': 3.5}  # means of steps 1-2, 1-4, 1-6
    assert score.collision == {'1s': 0.0, '2s': 0.25, '3s': pytest.approx(1 / 6)}
    assert score_trajectory(gt, truth).collision == {'1s': 0.0, '2s': 0.0, '3s': 0.0}


def _frame(name, qa, gt=None):
    return KeyFrame('s', name, {}, {}, tuple(qa), gt, Path('x.json'))


def test_planning_column_uses_frame_gt_and_reports_avg_and_parse_rate():
    gt = FrameGT(0, ((-1.5, 0.0), (-1.0, 0.0), (-0.5, 0.0), (0.0, 0.0)),
                 tuple((4.0 * (k + 1), 0.0) for k in range(6)),
                 tuple(() for _ in range(6)), {}, (64, 36))
    truth_text = ', '.join(f'[{4.0 * (k + 1):.2f}, 0.00]' for k in range(6))
    frames = [_frame(f'f{i}', [QA(f's_f{i}_0', 'Plan.', truth_text, 'planning', (2,),
                                  'planning_trajectory')], gt) for i in range(2)]
    pairs = [(f, f.qa[0]) for f in frames]
    answers = {'s_f0_0': ', '.join(f'[{4.0 * (k + 1):.2f}, {k + 1:.2f}]' for k in range(6)),
               's_f1_0': 'no trajectory'}
    column = score_column('model', pairs, answers, 'simple')
    assert (column.planning.items, column.planning.parsed) == (2, 1)
    assert column.planning.l2 == {'1s': 1.5, '2s': 2.5, '3s': 3.5, 'avg': 2.5}
    family = column.families['planning_trajectory']
    assert family.metric == 'L2 / collision' and family.value == 2.5
    # constant velocity from the history (0.5 m per step) keeps going at 1 m/s
    assert constant_velocity(gt.ego_history) == tuple((0.5 * k, 0.0) for k in range(1, 7))
    assert constant_velocity_answer(frames[0]).startswith('[0.5,0.0],[1.0,0.0]')
    assert constant_velocity([(0.0, 0.0)]) is None


def test_majority_per_type_with_category_fallback_and_templates():
    def qa(i, q, a, family=None, category='perception'):
        return QA(f'q{i}', q, a, category, (0,), family)

    frames = [_frame('a', [qa(0, 'Count cars in front?', '2', 'count'),
                           qa(1, 'Count cars in back?', '0', 'count'),
                           qa(2, 'Is <c1,CAM_FRONT,1.0,2.0> moving?', 'Yes.')]),
              _frame('b', [qa(3, 'Count cars left?', '0', 'count'),
                           qa(4, 'Is <c2,CAM_BACK,5.5,6.0> moving?', 'No.'),
                           qa(5, 'Is <c3,CAM_BACK,7.0,8.0> moving?', 'No.')])]
    majority = fit_majority(frames, 'test')
    assert majority.by_type['count'] == '0'
    assert question_type(frames[0].qa[2]) == 'Is <c> moving?'
    assert majority.answer(frames[0].qa[2]) == 'No.'
    unseen = QA('q9', 'Something new?', '', 'perception', (0,))
    assert majority.answer(unseen) == '0'  # the category's most common answer ('0' twice)
    assert fit_majority([_frame('c', [qa(0, 'Q?', '')])], 'q-only') is None


def test_agent_boxes_of_the_data_schema_feed_the_collision_test():
    gt = [(4.0 * (k + 1), 0.0) for k in range(6)]
    agents = [[AgentBox((16.0, 0.0), (4.0, 2.0), 0.0)] if k == 3 else [] for k in range(6)]
    from drive_vlm_pruned.eval.scoring import planning_truth

    truth = planning_truth(FrameGT(0, (), tuple(gt), tuple(tuple(a) for a in agents), {}, None))
    swerve = [(x, 0.0 if k != 3 else 16.0) for k, (x, _) in enumerate(gt)]
    # GT itself hits the box at step 4, so that step is skipped for everyone
    assert score_trajectory(swerve, truth).collision == {'1s': 0.0, '2s': 0.0, '3s': 0.0}
    ahead = [(x, 0.0) if k != 3 else (16.0, 8.0) for k, (x, _) in enumerate(gt)]
    shifted = [[AgentBox((16.0, 8.0), (4.0, 2.0), 0.0)] if k == 3 else [] for k in range(6)]
    truth = planning_truth(FrameGT(0, (), tuple(gt), tuple(tuple(a) for a in shifted), {}, None))
    assert score_trajectory(ahead, truth).collision['2s'] == 0.25
