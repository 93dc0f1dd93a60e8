"""PIRL reference cases (tests/reference/pirl_*.npz, VISSL's NCELossWithMemory) -> comparisons for
scripts/check_reference.py.

Each case feeds the stored embeddings, memory bank, batch indices and negatives (as NumPy arrays, as
np.load gives them) to `pirl_loss` with the case's temperature, norm_constant and loss_type, and the
image embedding to `update_memory` with the case's memory momentum: the loss against VISSL's, Z against
the constant VISSL holds after the call, and the updated bank against VISSL's.
"""

from pirl import train as pirl

INPUTS = ("patch_embedding", "image_embedding", "memory", "indices", "neg_idx_patch", "neg_idx_image")


def run(entry, arrays, path):
    if not entry["case"].startswith("pirl_"):
        raise NotImplementedError(f"no PIRL runner for case {entry['case']!r}")
    hyper, tol = entry["hyper"], entry["tolerance"]
    loss, Z = pirl.pirl_loss(
        *(arrays[k] for k in INPUTS), hyper["temperature"], hyper["norm_constant"], hyper["loss_type"]
    )
    memory = pirl.update_memory(
        arrays["memory"], arrays["indices"], arrays["image_embedding"], hyper["memory_momentum"]
    )
    return [
        (name, ours, arrays[name], tol[name]["rtol"], tol[name]["atol"])
        for name, ours in (("loss", loss), ("Z", Z), ("new_memory", memory))
    ]
