"""gradlens.viz.text and text_html: tokens coloured by their scores, escaped, wrapped."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure

from gradlens.viz import text, text_html
from gradlens.viz.tokens import wrap

SPAN = (
    '<span style="display: inline-block; margin: 1px; padding: 0 2px; white-space: pre; '
    'background-color: {}; color: {}" title="{}">{}</span>'
)


def token_texts(fig: Figure, sample: int = 0) -> list:
    """The token texts of one sample's axes (the ones with a coloured box), in order."""
    return [t for t in fig.axes[sample].texts if t.get_bbox_patch() is not None]


def backgrounds(fig: Figure, sample: int = 0) -> list[str]:
    return [to_hex(t.get_bbox_patch().get_facecolor()) for t in token_texts(fig, sample)]


def html_backgrounds(page: str) -> list[str]:
    return re.findall(r"background-color: (#[0-9a-f]{6})", page)


def test_html_of_a_small_case_is_exactly_this():
    page = text_html(
        [["a", "<b>", "[PAD]"]],
        torch.tensor([[2.0, -2.0, 5.0]]),
        mask=torch.tensor([[1, 1, 0]]),
        titles=["s&p"],
    )
    # +2 and -2 are the ends of the diverging map: pure red and pure blue, white text
    assert page == (
        '<div style="font-family: monospace; line-height: 1.8">\n'
        '<div style="margin-bottom: 0.6em"><div style="font-weight: bold">s&amp;p</div>'
        + SPAN.format("#ff0000", "#ffffff", "2", "a")
        + SPAN.format("#0000ff", "#ffffff", "-2", "&lt;b&gt;")
        + "</div>\n</div>"
    )


def test_html_escapes_tokens_and_titles():
    tokens = ['<script>alert("x")</script>', "&", "'"]
    page = text_html(tokens, torch.ones(3), titles=["<i>"])
    assert "<script" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert ">&amp;<" in page and ">&#x27;<" in page and "&lt;i&gt;" in page


def test_the_figure_shows_tokens_literally_never_as_mathtext():
    tokens = ["$\\frac{$", "a_b", "%&#", "\\", "$x$"]
    fig = text(tokens, torch.rand(5, generator=torch.Generator().manual_seed(0)))
    assert [t.get_text() for t in token_texts(fig)] == tokens
    fig.savefig(io.BytesIO(), format="png")  # '$\frac{$' would not parse as mathtext


def test_line_breaks_and_tabs_are_shown_as_escapes():
    fig = text(["a\nb", "\t"], torch.ones(2))
    assert [t.get_text() for t in token_texts(fig)] == ["a\\nb", "\\t"]
    assert ">a\\nb<" in text_html(["a\nb"], torch.ones(1))


def test_signed_scores_are_blue_below_zero_white_at_zero_red_above():
    fig = text(["neg", "zero", "pos"], torch.tensor([-1.0, 0.0, 1.0]))
    negative, zero, positive = (to_rgb(c) for c in backgrounds(fig))
    assert negative == (0.0, 0.0, 1.0) and positive == (1.0, 0.0, 0.0)
    assert np.allclose(zero, (1.0, 1.0, 1.0), atol=0.01)


def test_non_negative_scores_use_the_sequential_map_from_near_white():
    fig = text(["low", "mid", "high"], torch.tensor([0.0, 0.5, 1.0]))
    low, mid, high = (to_rgb(c) for c in backgrounds(fig))
    assert all(r >= b for r, _, b in (low, mid, high))  # reds, never blue
    assert min(low) > 0.9 and sum(high) < sum(mid) < sum(low)  # darker as the score grows
    forced = text(["x", "y"], torch.tensor([0.0, 1.0]), signed=True)
    assert backgrounds(forced)[1] == "#ff0000"  # the diverging map's positive end


def test_the_figure_and_the_html_use_the_same_colours():
    scores = torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]])
    tokens = [["a", "b", "c"], ["d", "e", "f"]]
    fig = text(tokens, scores)
    assert backgrounds(fig, 0) + backgrounds(fig, 1) == html_backgrounds(text_html(tokens, scores))


def test_each_sample_has_its_own_scale_unless_a_limit_is_given():
    tokens, scores = [["a"], ["b"]], torch.tensor([[1.0], [2.0]])
    assert html_backgrounds(text_html(tokens, scores)) == ["#67000d", "#67000d"]
    half, full = html_backgrounds(text_html(tokens, scores, limit=2.0))
    assert half != full and full == "#67000d"


def test_one_axes_per_sample_and_padding_is_not_drawn():
    tokens = [["a", "b", "[PAD]"], ["c", "d", "e"], ["f", "[PAD]", "[PAD]"]]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    fig = text(tokens, torch.rand(3, 3), mask, titles=["x", "y", "z"])
    assert len(fig.axes) == 3
    assert [[t.get_text() for t in token_texts(fig, b)] for b in range(3)] == [
        ["a", "b"],
        ["c", "d", "e"],
        ["f"],
    ]
    assert [ax.texts[0].get_text() for ax in fig.axes] == ["x", "y", "z"]  # titles first
    assert "PAD" not in text_html(tokens, torch.rand(3, 3), mask)


def test_long_sequences_wrap_into_the_expected_number_of_lines():
    # 9 characters and a space per token: 4 tokens fit in 40 characters (39), 5 do not (49)
    tokens = [f"token{i:04d}" for i in range(10)]
    fig = text(tokens, torch.rand(10), line_width=40)
    lines = [t.get_position()[1] for t in token_texts(fig)]
    assert lines == [0] * 4 + [1] * 4 + [2] * 2
    starts = [t.get_position()[0] for t in token_texts(fig)]
    assert starts[:4] == [0, 10, 20, 30]


def test_wrap_breaks_greedily_and_gives_an_overlong_token_its_own_line():
    assert wrap([3, 4, 3, 3], 12) == [[0, 1, 2], [3]]  # 3 + 1 + 4 + 1 + 3 = 12 fits
    assert wrap([2, 20, 2], 10) == [[0], [1], [2]]
    assert wrap([0, 0], 3) == [[0, 1]]  # an empty token still takes one character
    assert wrap([], 10) == []
    with pytest.raises(ValueError, match="line_width"):
        wrap([1], 0)


def test_one_list_of_tokens_is_one_sample():
    scores = torch.tensor([0.5, -1.0])
    assert text_html(["a", "b"], scores) == text_html([["a", "b"]], scores[None])
    assert len(text(["a", "b"], scores).axes) == 1


@pytest.mark.parametrize(
    "tokens, scores, mask, message",
    [
        ([["a", "b"], ["c", "d"]], torch.zeros(3, 2), None, "2 token lists for 3 rows"),
        ([["a", "b"], ["c"]], torch.zeros(2, 2), None, "sample 1 has 1 tokens"),
        (["a", "b", "c"], torch.zeros(2), None, "sample 0 has 3 tokens"),
        ([["a", "b"]], torch.zeros(1, 2, 1), None, r"shape \(B, T\)"),
        ([["a", "b"]], torch.zeros(1, 2), torch.ones(2, 1), "mask has shape"),
    ],
)
def test_shape_mismatches_raise(tokens, scores, mask, message):
    with pytest.raises(ValueError, match=message):
        text(tokens, scores, mask)
    with pytest.raises(ValueError, match=message):
        text_html(tokens, scores, mask)


def test_other_bad_arguments_raise():
    with pytest.raises(TypeError, match="not a str"):
        text("abc", torch.zeros(3))
    with pytest.raises(ValueError, match="one title per sample"):
        text_html([["a"], ["b"]], torch.zeros(2, 1), titles=["only one"])
    with pytest.raises(ValueError, match="limit"):
        text(["a"], torch.zeros(1), limit=0.0)
