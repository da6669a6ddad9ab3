"""Questions and six-view prompt text (camera order and names from nuScenes)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..cameras import NUSCENES_CAMERAS

VIEW_WORDS = {
    'CAM_FRONT': 'front view',
    'CAM_FRONT_LEFT': 'front left view',
    'CAM_FRONT_RIGHT': 'front right view',
    'CAM_BACK': 'back view',
    'CAM_BACK_LEFT': 'back left view',
    'CAM_BACK_RIGHT': 'back right view',
}

DRIVELM_QA = 'What are the important objects in the current scene? Describe their positions.'

# The planning question asks for the compact answer pipeline/trajectory.py parses: the six
# waypoints alone, one decimal (10 cm), no spaces. Decode costs one model step per token, and
# this is the fewest tokens a parsable trajectory takes (docs/latency.md counts them).
PLANNING = (
    '<PLANNING>Predicted future movement details for the next 3 seconds (sampled at 0.5-second '
    'intervals), including BEV location in x and y directions (in meters). Positive x means '
    'forward direction while positive y means leftwards. Answer with the six waypoints only, '
    'one decimal, no spaces: [x1,y1],[x2,y2],[x3,y3],[x4,y4],[x5,y5],[x6,y6]</PLANNING>'
)


def six_view_text(names: tuple[str, ...] = NUSCENES_CAMERAS) -> tuple[str, ...]:
    """
    Split the DriveMM six-view preamble around its image slots.

    Returns V + 1 text pieces; ``pieces[0] + <view 0> + pieces[1] + ... + <view V-1> + pieces[V]``
    reads "1: <image> 2: <image> ... These six images are the front view, ... of the ego
    vehicle." The caller puts each view's image tokens in the slots.
    """
    count = len(names)
    words = [VIEW_WORDS.get(n, n.lower()) for n in names]
    listing = ', '.join(words[:-1]) + f' and {words[-1]}' if count > 1 else words[0]
    pieces = ['1: '] + [f' {i + 1}: ' for i in range(1, count)]
    tail = f'. These {_number(count)} images are the {listing} of the ego vehicle.\n'
    return (*pieces, tail)


def _number(n: int) -> str:
    words = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight']
    return words[n] if n < len(words) else str(n)


# --- Per-checkpoint prompt formats -------------------------------------------------------------
# A converted checkpoint records the format it was trained with in its config.json
# (``drive_vlm_prompt_format``, written by ``drive-vlm convert``); a checkpoint without one uses
# 'default'. Sources of each template: docs/published_models.md.
PROMPT_FORMAT_KEY = 'drive_vlm_prompt_format'
PROMPT_SYSTEM_KEY = 'drive_vlm_system_message'
IMAGE_MARK = '<image>'

# zhijian11/DriveMM llava/train/train.py preprocess_llama3 (its demo and Prune2Drive's
# scripts/inference.py tokenize with it) and llava/conversation.py conv_llava_llama_3.
DRIVEMM_SYSTEM = ('You are a helpful language and vision assistant. You are able to understand '
                  'the visual content that the user provides, and assist the user with a variety '
                  'of tasks using natural language.')
# The system message of the default prompt (models/base.py SYSTEM).
DRIVING_SYSTEM = 'You are a helpful driving assistant.'
# OpenGVLab/InternVL internvl_chat/internvl/conversation.py, template 'internvl2_5'.
INTERNVL2_5_SYSTEM = ('你是书生·万象，英文名是InternVL，'
                      '是由上海人工智能实验室、清华大学及多家合作单位联合开发的'
                      '多模态大语言模型。')
# mbzuai-oryx/DriveLMM-o1 evaluation/inference.py: every test question is asked as
# DRIVELMM_O1_PREAMBLE + '\n<image>\n' + question.
DRIVELMM_O1_PREAMBLE = (
    'When answering the question based on the provided image, follow a structured and logical '
    'reasoning process. Organize your response using the format, ensuring each step builds upon '
    'the previous one and clearly explains how the image(s) contribute to the solution. Your '
    'answer should be structured as Reasoning Steps: (step by step reasoning) Final Answer: '
    '(final answer) \n Question: '
)
# LLaMA-Factory template 'qwen2_vl' (Impromptu-VLA trains and infers with it).
QWEN2_VL_SYSTEM = 'You are a helpful assistant.'
# Impromptu-VLA data_qa_generate/.../pipelines/pipeline_metadata.py ('6v'): view order and words.
IMPROMPTU_ORDER = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
                   'CAM_BACK_RIGHT')
IMPROMPTU_FOCUS = ' (which you should focus on with the most attention)'
# Impromptu-VLA pipeline_metadata.py get_user_prompt suffix, then pipeline_ego_status.py ('x-y').
IMPROMPTU_PLANNING = ('Your task is to do your best to predict future waypoints for the vehicle '
                      "over the next 3 timesteps, given the vehicle's intent inferred from the "
                      'images.')
IMPROMPTU_HISTORY = ('Provided are the previous ego vehicle status recorded over the last {span} '
                     'seconds (at 0.5-second intervals). This includes the x and y coordinates of '
                     'the ego vehicle. Positive x means forward direction while positive y means '
                     'leftwards. The data is presented in the format [x, y]:')
# zhijian11/DriveMM scripts/inference_demo/demo_image.py, its DriveLM question.
DRIVEMM_IMPORTANT_OBJECTS = ('What are the important objects in the current scene? Those objects '
                             'will be considered for the future reasoning and driving decision.')

QUESTION_PRESETS = {
    'planning': PLANNING,
    'drivelm-qa': DRIVELM_QA,
    'drivemm-important-objects': DRIVEMM_IMPORTANT_OBJECTS,
    'impromptu-planning': IMPROMPTU_PLANNING,
}


def resolve_question(text: str) -> str:
    """Return the preset named ``text`` (QUESTION_PRESETS), or ``text`` itself."""
    return QUESTION_PRESETS.get(text.strip(), text)


def impromptu_planning_question(history: tuple[tuple[float, float], ...] = ()) -> str:
    """
    Impromptu-VLA's nuScenes planning question, with the ego history if given.

    ``history`` holds the past ego positions at 0.5 s steps, oldest first, ending with the
    current one (0, 0), in metres (x forward, y left), as Impromptu's 'x-y' mode writes them:
    ``(t-3.0s) [x, y], ..., (t-0.0s) [0.0, 0.0]`` after the sentence that explains them.
    """
    if not history:
        return IMPROMPTU_PLANNING
    span = round(0.5 * (len(history) - 1), 1)
    steps = [f'(t-{round(span - 0.5 * i, 1)}s) [{_num(x)}, {_num(y)}]'
             for i, (x, y) in enumerate(history)]
    return IMPROMPTU_PLANNING + IMPROMPTU_HISTORY.format(span=span) + ', '.join(steps) + '\n'


def _num(value: float) -> str:
    rounded = round(float(value), 2)
    return str(0.0 if rounded == 0 else rounded)


@dataclass(frozen=True)
class PromptFormat:
    """
    How a checkpoint was trained to see its views: chat template, view text and image size.

    ``chat``: 'chatml' (``system`` in ChatML), 'llama3' (the tokenizer's own chat template,
    applied turn by turn as DriveMM's ``preprocess_llama3`` does) or 'internvl2_5'. ``order``:
    the camera order of the training prompt (None: the frame's order). ``pad_to_square``: pad
    each view to a square in the image-mean colour before resizing (LLaVA's multi-image 'pad').
    ``image_max_pixels``: shrink each view to at most this many pixels first (LLaMA-Factory's
    ``image_max_pixels``, nearest-neighbour, as Impromptu-VLA trained).
    """

    name: str
    family: str | None = None  # the adapter family it belongs to (None: any)
    chat: str = 'chatml'
    system: str = ''
    order: tuple[str, ...] | None = None
    pad_to_square: bool = False
    image_max_pixels: int | None = None
    bos: bool = False


PROMPT_FORMATS = {
    'default': PromptFormat('default'),
    'drivemm': PromptFormat('drivemm', 'llava-onevision', 'llama3', DRIVEMM_SYSTEM,
                            pad_to_square=True),
    'drivelmm-o1': PromptFormat('drivelmm-o1', 'internvl', 'internvl2_5', INTERNVL2_5_SYSTEM,
                                bos=True),
    'impromptu-vla': PromptFormat('impromptu-vla', 'qwen2.5-vl', 'chatml', QWEN2_VL_SYSTEM,
                                  order=IMPROMPTU_ORDER, image_max_pixels=262144),
    # Our from-scratch models (training/presets.py): each view's tokens follow its own name.
    'named-views': PromptFormat('named-views', None, 'chatml', DRIVING_SYSTEM),
}


def prompt_format_of(config, family: str) -> PromptFormat:
    """Return the format a model config records (``drive_vlm_prompt_format``), or 'default'."""
    name = getattr(config, PROMPT_FORMAT_KEY, None) or 'default'
    if name not in PROMPT_FORMATS:
        raise ValueError(f'config.json: {PROMPT_FORMAT_KEY} {name!r} is not one of '
                         f'{", ".join(sorted(PROMPT_FORMATS))}')
    fmt = PROMPT_FORMATS[name]
    if fmt.family not in (None, family):
        raise ValueError(f'config.json: prompt format {name!r} is for {fmt.family} checkpoints, '
                         f'this one is {family}')
    system = getattr(config, PROMPT_SYSTEM_KEY, None)  # a checkpoint's own system message
    return replace(fmt, system=system) if system else fmt


def view_slot_order(fmt: PromptFormat, names: tuple[str, ...]) -> tuple[int, ...]:
    """Return the frame's view indices in the order the format's prompt lists them."""
    if fmt.order is None:
        return tuple(range(len(names)))
    rank = {n: i for i, n in enumerate(fmt.order)}
    return tuple(sorted(range(len(names)), key=lambda v: (rank.get(names[v], len(rank)), v)))


def user_text(fmt: PromptFormat, names: tuple[str, ...], question: str) -> str:
    r"""
    Return the user turn with one IMAGE_MARK per view, ``names`` given in slot order.

    - drivemm: ``1: <image> 2: <image> ... 6: <image>. These six images are the front view, ...
      of the ego vehicle. <question>`` (DriveMM's demo_image.py; a space before the question);
    - drivelmm-o1: the DriveLMM-o1 reasoning preamble, then ``Image-1: <image>\n`` per view
      (InternVL's multi-image convention), then the question;
    - impromptu-vla: Impromptu-VLA's '6v' preamble with its numbered camera list, then the
      question;
    - named-views: ``the front view: <image>\nthe front left view: <image>\n ... <question>``.
      A question names its view in the same words that stand right before that view's tokens,
      so a model trained from scratch matches them directly; the numbered DriveMM preamble
      makes it map a name to its place in a list, then the number to a slot.
    """
    words = [VIEW_WORDS.get(n, n.lower()) for n in names]
    if fmt.name == 'drivemm':
        marks = ' '.join(f'{i + 1}: {IMAGE_MARK}' for i in range(len(names)))
        listing = _listing(words)
        return (f'{marks}. These {_number(len(names))} images are the {listing} of the ego '
                f'vehicle. {question}')
    if fmt.name == 'named-views':
        # 'the' first: the view words then carry their leading space, and tokenize as they do
        # inside a question ("... in the back left view?").
        return ''.join(f'the {w}: {IMAGE_MARK}\n' for w in words) + question
    if fmt.name == 'drivelmm-o1':
        marks = ''.join(f'Image-{i + 1}: {IMAGE_MARK}\n' for i in range(len(names)))
        return DRIVELMM_O1_PREAMBLE + '\n' + marks + question
    if fmt.name == 'impromptu-vla':
        if len(names) == 1:
            return (f'You are an autonomous driving agent. You have access to a {words[0]} camera '
                    f'image of a vehicle {IMAGE_MARK}. {question}')
        items = [f'({i + 1}) {w}{IMPROMPTU_FOCUS if n == "CAM_FRONT" else ""} {IMAGE_MARK}'
                 for i, (n, w) in enumerate(zip(names, words))]
        return ('You are an autonomous driving agent. You have access to multi-view camera images '
                f'of a vehicle: {", ".join(items[:-1])}, and {items[-1]}. {question}')
    raise ValueError(f'prompt format {fmt.name!r} has no user text (it uses six_view_text)')


def _listing(words: list[str]) -> str:
    return ', '.join(words[:-1]) + f' and {words[-1]}' if len(words) > 1 else words[0]
