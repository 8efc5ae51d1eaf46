"""Regenerate tests/models/data/official_small.pt by running the official DAO code (GLAD-RUC/DAO).

Usage: python tools/make_official_fixture.py /path/to/official/DAO [--out tests/models/data/official_small.pt]

The official checkout's ``dao`` package (``dao.pl_modules.crysformer.CrysFormer`` and
``dao.pl_modules.PTModels.SinusoidalTimeEmbeddings``) is imported from that path, with whatever
dependencies its environment provides (torch_scatter, torch_geometric, einops). This script never imports
our ``dao``: both packages have the same name. It builds a SMALL official network (2 layers, hidden 32,
4 heads, 16 frequencies, time embedding 256, ``ln: false``) with random weights, adds the finetuned
property ``predictor`` head laid out as the official CrystPredictiveFinetuneModel lays it out, and records,
in float64, its outputs for three crystals at three sets of integer times: the lattice head (B, 3, 3), the
coordinate head (N, 3), the scalar (energy) head (B,) and the property head at t = 0 (B,).

The fixture (official parameter names with the Lightning module prefixes ``decoder.`` / ``predictor.``,
the official hyper-parameters as plain values, the inputs and the expected outputs) is readable with
``torch.load(weights_only=True)``; tests/models/test_convert.py checks that our converted models reproduce it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

SIZES = {"hidden_dim": 32, "num_layers": 2, "head_num": 4, "num_freqs": 16, "ln": False}
TIME_DIM = 256
#: three crystals (atomic numbers): H/O, Li/Fe/C and a 5-atom cell with He, O, Fe, C and Dy
CRYSTALS = [[1, 8], [3, 26, 6], [2, 8, 8, 26, 66]]
TIMES = [[0, 0, 0], [1, 500, 1000], [250, 731, 999]]


def build(official: Path, seed: int) -> tuple[torch.nn.Module, torch.nn.Module, type]:
    sys.path.insert(0, str(official))
    from dao.pl_modules.crysformer import CrysFormer  # the official module
    from dao.pl_modules.PTModels import SinusoidalTimeEmbeddings

    torch.manual_seed(seed)
    decoder = CrysFormer(latent_dim=TIME_DIM, max_atoms=100, diffuse=True, dis_emb="sin", edge_style="fc",
                         ip=True, norm_edge=True, **SIZES)
    d = SIZES["hidden_dim"]
    predictor = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.SiLU(), torch.nn.Linear(d, 1))
    with torch.no_grad():  # non-trivial values everywhere (LayerNorm affines, biases, gates), weights float32-exact
        for name, p in list(decoder.named_parameters()) + list(predictor.named_parameters()):
            if name != "embedding_in.0.weight":  # the fixed CGCNN table stays as the official code sets it
                p.add_(0.2 * torch.randn_like(p))
            p.copy_(p.float().double())
    return decoder.double().eval(), predictor.double().eval(), SinusoidalTimeEmbeddings


def inputs(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    atom_types = torch.tensor([z for c in CRYSTALS for z in c], dtype=torch.long)
    num_atoms = torch.tensor([len(c) for c in CRYSTALS], dtype=torch.long)
    frac = torch.rand(len(atom_types), 3, generator=gen, dtype=torch.float64)
    lattice = 4.0 * torch.eye(3, dtype=torch.float64) + torch.randn(len(CRYSTALS), 3, 3, generator=gen,
                                                                      dtype=torch.float64)
    return {"atom_types": atom_types, "num_atoms": num_atoms, "frac": frac, "lattice": lattice,
            "times": torch.tensor(TIMES, dtype=torch.long)}


@torch.no_grad()
def expected(decoder: torch.nn.Module, predictor: torch.nn.Module, time_cls: type,
             x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    node2graph = torch.repeat_interleave(torch.arange(len(x["num_atoms"])), x["num_atoms"])
    embed = time_cls(TIME_DIM)
    lat, coord, energy = [], [], []
    for times in x["times"]:
        out = decoder(embed(times), x["atom_types"], x["frac"], x["lattice"], x["num_atoms"], node2graph)
        lat.append(out[0])
        coord.append(out[1])
        energy.append(out[5].squeeze(-1))
    t0 = embed(torch.zeros(len(x["num_atoms"]), dtype=torch.float64))
    _, graph = decoder(t0, x["atom_types"], x["frac"], x["lattice"], x["num_atoms"], node2graph, only_rep=True)
    return {"lattice": torch.stack(lat), "coord": torch.stack(coord), "energy": torch.stack(energy),
            "property": predictor(graph).squeeze(-1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", type=Path, help="path of an official GLAD-RUC/DAO checkout")
    ap.add_argument("--out", type=Path, default=Path("tests/models/data/official_small.pt"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)  # the official code's own tensors (frequencies, time embedding)
    decoder, predictor, time_cls = build(args.official, args.seed)
    x = inputs(args.seed + 1)
    state = {f"decoder.{k}": v.float() for k, v in decoder.state_dict().items()}
    state.update({f"predictor.{k}": v.float() for k, v in predictor.state_dict().items()})
    hparams = {"decoder": {**SIZES, "latent_dim": 0, "max_atoms": 100, "dis_emb": "sin", "edge_style": "fc",
                           "ip": True, "norm_edge": True, "act_fn": "silu"},
               "time_dim": TIME_DIM, "latent_dim": 0, "timesteps": 1000}
    fixture = {"format": "dao-official-fixture-1", "state_dict": state, "hyper_parameters": hparams,
               "inputs": x, "expected": expected(decoder, predictor, time_cls, x)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {sum(v.numel() for v in state.values())} weights)")
    save_omegaconf_hparams(hparams, args.out.parent / "omegaconf_hparams.pt")


def save_omegaconf_hparams(hparams: dict, path: Path) -> None:
    """The same hyper-parameters pickled as the official Lightning modules store them (OmegaConf
    containers, as Hydra passes them), for the test that reads them without OmegaConf installed."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        print("omegaconf is not installed: omegaconf_hparams.pt not written")
        return
    cfg = OmegaConf.create(hparams)
    torch.save({"hyper_parameters": {"decoder": cfg.decoder, "time_dim": cfg.time_dim, "timesteps": cfg.timesteps}},
               path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
