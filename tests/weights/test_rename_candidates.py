"""The one rename rule's candidates: a torch Sequential index `a.0` is the Linen port's
`a_0` (a list attribute) or `a/layers_0` (inside a Flax nn.Sequential), both offered, the
rename first; names without an index have one candidate."""

from weights.trees import flax_path_candidates


def test_a_sequential_index_offers_the_list_name_then_the_flax_sequential_name():
    assert flax_path_candidates("body.0") == ["body_0", "body/layers_0"]
    assert flax_path_candidates("enc.blocks.3.conv") == ["enc/blocks_3/conv",
                                                         "enc/blocks/layers_3/conv"]


def test_names_without_an_index_have_one_candidate():
    assert flax_path_candidates("feat_out_1.fusion.outlayer") == ["feat_out_1/fusion/outlayer"]
    assert flax_path_candidates("fc2") == ["fc2"]
