"""Finetune DAO-P into a judge of one composition's candidates (docs/templates.md, 'A judge trained to judge').

DAO-P as trained predicts E_hull of relaxed, mostly stable crystals; on the candidates of one composition
(template substitutions into several prototypes) its energies barely rank the right one first. This tool reads
labelled candidates written by ``tools/train_template_ranker.py --structures FILE`` (extxyz frames whose info
holds ``group`` and ``label``: 1 when the candidate matches the composition's true structure), starts from a
DAO-P checkpoint and trains its clean-structure energy f(M, 0) with a listwise loss: within each group,
softmax(−f) should put its mass on the matching candidates. Groups without a match or with one candidate carry
no ranking signal and are skipped. A fraction of the groups (``--held-out``, by ``--seed``) is held out: the
judge never trains on them, so a judge-aware template ranker can be fitted on its scores there.

    OMP_NUM_THREADS=1 python tools/train_judge.py --structures /tmp/j7.extxyz --out runs/judge/model.pt \
        --max-minutes 20

Prints JSON: groups used, the held-out top-1 rate of the similarity order (position 0), of the starting DAO-P
and of the finetuned one; ``--scores FILE`` also writes the finetuned energy per atom of every candidate (in file order)
as ``.npy`` and ``--held-out-groups FILE`` the held-out group ids, for fitting a judge-aware template ranker.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dao.crystal import Crystal, CrystalBatch
from dao.models.checkpoint import load_energy_model, save_model
from dao.models.energy import predict_energies
from dao.templates.ranker import listwise_loss, top1_rate


def read_candidates(paths: list[str]) -> tuple[list[Crystal], np.ndarray, np.ndarray, np.ndarray]:
    """Crystals, labels, group ids (renumbered across files) and positions of the labelled candidates."""
    from dao.data.readers import read_extxyz

    crystals, offset = [], 0
    labels, groups, positions = [], [], []
    for path in paths:
        got, skipped = read_extxyz(path)
        if skipped:  # the frames must stay aligned with the labelling run's feature cache
            raise SystemExit(f"{path}: unreadable frame {skipped[0][0]}: {skipped[0][1]}")
        crystals += got
        labels += [float(c.meta["label"]) for c in got]
        groups += [int(c.meta["group"]) + offset for c in got]
        positions += [int(c.meta.get("position", 0)) for c in got]
        offset = max(groups, default=offset - 1) + 1
    return crystals, np.array(labels), np.array(groups), np.array(positions)


def top1(energy: np.ndarray, labels: np.ndarray, groups: np.ndarray, keep: list[int]) -> float:
    """How often the lowest-energy candidate of each kept group is a match."""
    return top1_rate([-energy[groups == g] for g in keep], [labels[groups == g] for g in keep]) if keep else math.nan


def write_ranker_cache(features: str, out: str, model: str, crystals: list[Crystal], groups: np.ndarray,
                       keep: list[int]) -> None:
    """The feature cache's rows of the ``keep`` groups, with ``e_dao``: ``model``'s energy per atom of each
    candidate through :func:`dao.ranking.single_point_energies` (the path ``dao predict`` takes)."""
    from dao.ranking import single_point_energies

    with np.load(features) as z:
        cache = {k: z[k] for k in z.files}
    if not np.array_equal(cache["group"], groups[:len(cache["group"])]) or len(cache["group"]) != len(groups):
        raise SystemExit(f"{features} does not hold the same candidates as the structures file")
    rows = np.flatnonzero(np.isin(groups, keep))
    structures = [crystals[i].to_structure() for i in rows]
    e = [v for s in range(0, len(structures), 32)  # one composition's worth at a time, as in dao predict
         for v in single_point_energies(structures[s:s + 32], "dao", energy_model=model)]
    cache = {k: v[rows] for k, v in cache.items()}
    cache["e_dao"] = np.array([np.nan if v is None else v for v in e], dtype=float)
    np.savez_compressed(out, **cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--structures", nargs="+", required=True)
    p.add_argument("--model", default="default", help="the DAO-P to start from")
    p.add_argument("--out", default=None)
    p.add_argument("--scores", default=None, help="write the finetuned energy of every candidate here (.npy)")
    p.add_argument("--groups-per-step", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--max-atoms", type=int, default=52)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out", type=float, default=0.2, help="fraction of groups never trained on")
    p.add_argument("--held-out-groups", default=None, help="write the held-out group ids here (.npy)")
    p.add_argument("--features", default=None, help="the labelling run's feature cache (.npz, same candidates)")
    p.add_argument("--ranker-cache", default=None,
                   help="with --features: write the held-out groups' features with e_dao, the saved "
                        "judge's single-point energies as dao predict computes them (fit a DAO-aware ranker on it "
                        "with tools/train_template_ranker.py --pool FILE --with-energy dao)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    crystals, labels, groups, positions = read_candidates(a.structures)
    ids = [g for g in np.unique(groups) if labels[groups == g].any() and (groups == g).sum() > 1
           and max(crystals[i].num_atoms for i in np.flatnonzero(groups == g)) <= a.max_atoms]
    rng = np.random.default_rng(a.seed)
    held = set(rng.choice(ids, size=int(len(ids) * a.held_out), replace=False).tolist())
    train = [g for g in ids if g not in held]
    test = sorted(held)
    model = load_energy_model(a.model, "cpu")
    base = predict_energies(model, crystals)
    first = -np.where(positions == 0, 1.0, 0.0)  # the similarity order's first candidate
    result = {"candidates": len(crystals), "groups": len(ids), "held_out": len(test),
              "top1_similarity_order": top1(first, labels, groups, test), "top1_base": top1(base, labels, groups, test)}
    members = {g: np.flatnonzero(groups == g) for g in ids}
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    t0, step, epoch = time.time(), 0, -1
    model.train()
    for epoch in range(a.epochs):
        order = rng.permutation(train)
        for s in range(0, len(order), a.groups_per_step):
            chunk = order[s:s + a.groups_per_step]
            idx = np.concatenate([members[g] for g in chunk])
            gid = torch.as_tensor(np.concatenate([np.full(len(members[g]), k) for k, g in enumerate(chunk)]))
            batch = CrystalBatch.from_crystals([crystals[i] for i in idx])
            f = model.energy(batch, torch.zeros(batch.num_crystals))
            loss = listwise_loss(-f, torch.as_tensor(labels[idx], dtype=f.dtype), gid)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if time.time() - t0 > a.max_minutes * 60:
                break
        model.eval()
        tuned = predict_energies(model, crystals)
        model.train()
        print(json.dumps({"epoch": epoch, "steps": step, "seconds": round(time.time() - t0),
                          "top1_held_out": top1(tuned, labels, groups, test)}), file=sys.stderr, flush=True)
        if time.time() - t0 > a.max_minutes * 60:
            break
    model.eval()
    tuned = predict_energies(model, crystals)
    result.update(top1_finetuned=top1(tuned, labels, groups, test), epochs=epoch + 1, steps=step,
                  seconds=round(time.time() - t0))
    if a.scores:
        np.save(a.scores, tuned)
    if a.held_out_groups:
        np.save(a.held_out_groups, np.array(test))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        save_model(a.out, model, {"command": " ".join(sys.argv), "trained_as": "listwise judge", **result})
    if a.features and a.ranker_cache:  # with --epochs 0: the cache for an already trained --model
        write_ranker_cache(a.features, a.ranker_cache, a.out or a.model, crystals, groups, test)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
