"""Reading a results folder of `wsgate bench` JSON reports, for the table printers in bench/*.sh."""
import glob
import json
import os


def runs(folder, prefix):
    """The last JSON line of each FOLDER/PREFIX.wsgate.*.json, in name order; unreadable ones are skipped."""
    out = []
    for p in sorted(glob.glob(os.path.join(folder, prefix + ".wsgate.*.json"))):
        try:
            out.append(json.loads(open(p).read().strip().splitlines()[-1]))
        except (ValueError, IndexError):
            pass
    return out


def get(report, path):
    """report["a"]["b"] for path "a.b", or None when any step is missing."""
    for k in path.split("."):
        if not isinstance(report, dict) or report.get(k) is None:
            return None
        report = report[k]
    return report
