"""The table both peer benchmarks print (vs_torchdistill.py, vs_hf_trainer.py): leankd online, leankd with its
teacher cache, and the peer toolkit, each one's epoch time as a ratio to leankd online, accuracy and agreement."""


def peer_table(rows: dict, peer_name: str, peer: dict, build_note: str = "") -> str:
    """`rows`: leankd's store rows by arm (`kd_online`, `kd`); `peer`: {"epoch_s": [...], "accuracy", "agreement"}
    (fractions); `build_note`: what the cache build covered, e.g. " (2 augmentation view(s))"."""
    online = rows["kd_online"]["train_s"] / rows["kd_online"]["extra"]["epochs"]
    lines = ["| toolkit | epoch time (s) | x leankd online | accuracy (%) | agreement (%) | note |", "|---" * 6 + "|"]

    def line(name: str, ep: float, accuracy: float, agreement: float, note: str) -> str:
        return f"| {name} | {ep:.1f} | {ep / online:.2f} | {100 * accuracy:.2f} | {100 * agreement:.2f} | {note} |"

    for name, r in (("leankd online (cache off)", rows["kd_online"]), ("leankd default (cache on)", rows["kd"])):
        note = f"+ cache build {r['cache_share_s']:.1f} s once{build_note}" if r["cache_share_s"] else \
            "teacher forward every step"
        lines.append(line(name, r["train_s"] / r["extra"]["epochs"], r["metrics"]["accuracy"],
                          r["metrics"]["agreement"], note))
    lines.append(line(peer_name, sum(peer["epoch_s"]) / len(peer["epoch_s"]), peer["accuracy"], peer["agreement"],
                      "teacher forward every step"))
    cached = rows["kd"]["train_s"] + rows["kd"]["cache_share_s"]
    lines += ["", f"whole run incl. leankd's cache build: leankd cached {cached:.1f} s, leankd online "
              f"{rows['kd_online']['train_s']:.1f} s, {peer_name.split()[0]} {sum(peer['epoch_s']):.1f} s"]
    return "\n".join(lines)
