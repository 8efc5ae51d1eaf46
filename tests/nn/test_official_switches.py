"""The official-architecture switches of CrysformerConfig and the official CGCNN atom table
(docs/convert.md): the defaults are unchanged, each switch does exactly its one thing."""
from __future__ import annotations

import pytest
import torch

from dao.crystal import CrystalBatch
from dao.errors import ConfigError
from dao.nn.crysformer import OFFICIAL_ARCHITECTURE, Crysformer, CrysformerConfig
from dao.nn.embeddings import atom_feature_table

#: set bits of rows of the official CGCNN_LIST (GLAD-RUC/DAO dao/common/utils.py), read off the official
#: source by hand: group (bits 0-18), period (19-25), then the CGCNN property bins
OFFICIAL_ROWS = {
    1: [1, 19, 30, 36, 46, 64, 73, 78, 86],  # H
    2: [18, 19, 36, 47, 67, 78, 88],  # He: 7 set bits (no electronegativity / electron-affinity bin)
    3: [1, 20, 27, 40, 46, 59, 73, 78, 85],  # Li
    6: [14, 20, 31, 38, 49, 63, 74, 79, 82],  # C
    8: [16, 20, 34, 37, 51, 64, 74, 79, 86],  # O
    26: [8, 22, 29, 40, 53, 61, 72, 80, 83],  # Fe
}


def small(**switches) -> CrysformerConfig:
    return CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8,
                            heads_out=["lattice", "coord", "energy"], **switches)


@pytest.mark.parametrize("z", sorted(OFFICIAL_ROWS))
def test_cgcnn_rows_match_the_official_table(z):
    table = atom_feature_table("cgcnn")
    assert table.shape == (101, 92)
    assert torch.nonzero(table[z]).flatten().tolist() == OFFICIAL_ROWS[z]
    assert set(table[z].unique().tolist()) == {0.0, 1.0}


def test_cgcnn_table_is_the_official_one_not_ours():
    cgcnn, ours = atom_feature_table("cgcnn"), atom_feature_table("dao")
    assert float(cgcnn[0].abs().sum()) == 0.0 and bool((cgcnn[1:].sum(1) >= 6).all())
    assert not torch.equal(cgcnn[1], ours[1])  # the issue: our H row differs from CGCNN's
    with pytest.raises(ValueError, match="unknown atom table"):
        atom_feature_table("nope")


def test_defaults_are_todays_architecture():
    cfg = CrysformerConfig.from_dict({"hidden": 16, "layers": 1, "heads": 2, "num_freqs": 4, "time_dim": 8})
    assert (cfg.atom_table, cfg.atom_offset, cfg.gate_bias, cfg.final_norm) == ("dao", True, True, True)
    keys = set(Crysformer(cfg).state_dict())
    assert {"atom_embedding.offset.weight", "final_norm.weight", "layers.0.gate_attn.gate.bias",
            "layers.0.gate_ffn.gate.bias"} <= keys


def test_official_switches_remove_exactly_their_parameters():
    default = set(Crysformer(small()).state_dict())
    official = set(Crysformer(small(**OFFICIAL_ARCHITECTURE)).state_dict())
    assert default - official == {"atom_embedding.offset.weight", "final_norm.weight", "final_norm.bias",
                                  "layers.0.gate_attn.gate.bias", "layers.0.gate_ffn.gate.bias"}
    assert official <= default
    model = Crysformer(small(atom_table="cgcnn"))
    assert torch.equal(model.atom_embedding.table, atom_feature_table("cgcnn"))


def test_switches_change_the_function_as_documented():
    torch.manual_seed(0)
    batch = CrystalBatch.from_compositions([[8, 26, 26], [3, 9]])
    batch = batch.replace(frac=torch.rand(batch.frac.shape), lattice=4 * torch.eye(3).expand(2, 3, 3).clone())
    t = torch.tensor([0.3, 0.7])
    base = Crysformer(small()).eval()
    for switch, expect_same in (({"gate_bias": False}, "zero gate bias"), ({"final_norm": False}, None)):
        other = Crysformer(small(**switch)).eval()
        other.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            if expect_same:  # a zero gate bias in our layout is the official bias-free gate
                for layer in base.layers:
                    layer.gate_attn.gate.bias.zero_()
                    layer.gate_ffn.gate.bias.zero_()
                assert torch.allclose(base(batch, t).lattice, other(batch, t).lattice, atol=1e-6)
            else:  # without the final LayerNorm the pooled feature is the raw last-layer output
                assert not torch.allclose(base(batch, t).graph, other(batch, t).graph)


def test_bad_atom_table_is_a_config_error():
    with pytest.raises(ConfigError, match="atom_table"):
        CrysformerConfig.from_dict({"atom_table": "mendeleev"})
