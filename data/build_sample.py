"""Build data/sample/: the small real corpus that ships with crucible (demo, tests, benchmarks).

Reads the public sources under --shared (see MANIFEST.md there; only bundle=yes sources are used),
adds labelled exact and near duplicates, spliced synthetic PII and a few edge cases, shuffles
everything with a fixed seed and writes 4 zstd Parquet shards to <out>/raw/. No network, no clock:
the same inputs and the same pyarrow version give byte-identical shards.

    python data/build_sample.py [--shared ../shared/data] [--out data/sample]
"""

import argparse
import json
import random
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = "crucible-sample-v1"  # str seeds hash with sha512: stable across runs and PYTHONHASHSEED
N_SHARDS = 4
GUTENBERG_CHUNKS_PER_BOOK = 20
GUTENBERG_CHUNK_CHARS = (2000, 8000)  # each chunk's target length is drawn from this range
SOTU_EVERY = 5  # keep every 5th speech (by year) of those that decode as UTF-8
LINGUA_LANGS = ("de", "fr", "es", "it", "pt", "nl", "ru", "pl", "sv", "tr", "zh", "ja", "ar", "ko", "vi")
LINGUA_DOCS_PER_LANG = 20
LINGUA_SENTENCES_PER_DOC = (5, 15)
NO_SPACE_LANGS = ("zh", "ja")  # sentences are joined without a space
PRESIDIO_STANDALONE = 150  # used as short documents of their own
PRESIDIO_SPLICED = 150  # spliced, 1-3 per document, into c4 documents
EXACT_DUP_FRACTION = 0.05
NEAR_DUP_FRACTION = 0.05
NEAR_DUP_MIN_CHARS = 800  # shorter originals would change too much under one edit

# dj-dedup-demo ships its own duplicates: line index -> (line index of the original, kind).
DJ_DEDUP_LABELS = {5: (0, "near-word"), 8: (7, "near-word"), 9: (7, "near-truncated"),
                   10: (9, "near-word"), 11: (6, "exact"), 13: (12, "near-word")}

# Licenses whose text must travel with the copies (Apache-2.0 section 4a; MIT's notice clause).
LICENSE_COPIES = {
    "Apache-2.0.txt": ("dolma-cc", "LICENSE"),
    "MIT-presidio-research.txt": ("presidio", "LICENSE"),
}

EDGE_CASE_TEXTS = ("", " ", "\n\n", "\t \u3000\u00a0\n", "ok", "404 Not Found", "Read more \u00bb")

BOILERPLATE_HEADERS = (
    "Skip to main content",
    "Home \u00bb News \u00bb Local",
    "Posted on March 14, 2019 by admin",
    "Advertisement",
)
BOILERPLATE_FOOTERS = (
    "Share this:\nFacebook\nTwitter\nPinterest\nEmail",
    "Copyright \u00a9 2019. All rights reserved.",
    "Click here to subscribe to our newsletter!",
    "Leave a Reply Cancel reply\nYour email address will not be published. Required fields are marked *",
)

SENTENCE = re.compile(r"[^.!?\u3002\uff01\uff1f]*[.!?\u3002\uff01\uff1f]+[\"'\u201d\u2019)]*\s*")

PII_SPAN = pa.struct([("entity_type", pa.string()), ("start", pa.int32()), ("end", pa.int32())])
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("source", pa.string()),
    ("url", pa.string()),
    ("source_lang", pa.string()),  # not "lang": curation's language_id writes that column
    ("dup_of", pa.string()),
    ("dup_kind", pa.string()),
    ("pii_spans", pa.list_(PII_SPAN)),
])


@dataclass(frozen=True)
class Doc:
    id: str
    text: str
    source: str
    url: str | None = None
    lang: str | None = None  # set only where the source fixes the language
    dup_of: str | None = None  # id of the original, for every labelled duplicate
    dup_kind: str | None = None  # "exact" or "near-<edit>"
    pii_spans: tuple | None = None  # ((entity_type, start, end), ...) in characters; None = not annotated


def rng_for(name: str) -> random.Random:
    """One independent stream per step, so changing one step does not reshuffle the others."""
    return random.Random(f"{SEED}:{name}")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_c4(shared: Path) -> list[Doc]:
    rows = read_jsonl(shared / "c4-sample1k" / "c4_sample.jsonl")
    return [Doc(f"c4-{i:06d}", r["text"], "c4", r["url"]) for i, r in enumerate(rows)]


def load_dolma(shared: Path) -> list[Doc]:
    rows = [r for path in sorted((shared / "dolma-cc").glob("*.jsonl")) for r in read_jsonl(path)]
    return [Doc(f"dolma-{i:04d}", r["text"], "dolma-cc", r["metadata"]["url"]) for i, r in enumerate(rows)]


def gutenberg_chunks(text: str, rng: random.Random) -> list[str]:
    """Greedily pack whole paragraphs into chunks of a random target length."""
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    chunks, current, size = [], [], 0
    target = rng.randint(*GUTENBERG_CHUNK_CHARS)
    for p in paragraphs:
        current.append(p)
        size += len(p) + 2
        if size >= target:
            chunks.append("\n\n".join(current))
            current, size, target = [], 0, rng.randint(*GUTENBERG_CHUNK_CHARS)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def load_gutenberg(shared: Path) -> list[Doc]:
    rng = rng_for("gutenberg")
    docs = []
    for path in sorted((shared / "gutenberg-10").glob("pg*.txt")):
        book = path.stem.removeprefix("pg")
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        chunks = gutenberg_chunks(text, rng)
        keep = sorted(rng.sample(range(len(chunks)), min(GUTENBERG_CHUNKS_PER_BOOK, len(chunks))))
        docs += [Doc(f"gutenberg-{book}-{k:03d}", chunks[k], "gutenberg",
                     f"https://www.gutenberg.org/ebooks/{book}", "en") for k in keep]
    return docs


def load_wiki(shared: Path) -> list[Doc]:
    lines = (shared / "wiki-demo" / "wiki_demo.txt").read_text(encoding="utf-8").split("\n")
    articles = [line.strip() for line in lines if line.strip()]
    return [Doc(f"wiki-{i:03d}", t, "wiki-demo", None, "en") for i, t in enumerate(articles)]


def load_state_union(shared: Path) -> list[Doc]:
    """Whole speeches. Six files (1954, 1970-74) hold non-UTF-8 bytes and are never picked."""
    speeches = []
    with zipfile.ZipFile(shared / "nltk-state-union" / "state_union.zip") as zf:
        for name in sorted(n for n in zf.namelist() if n.endswith(".txt")):
            try:
                speeches.append((Path(name).stem, zf.read(name).decode("utf-8")))
            except UnicodeDecodeError:
                continue
    return [Doc(f"sotu-{stem.lower()}", text.strip(), "state-union", None, "en")
            for stem, text in speeches[::SOTU_EVERY]]


def load_lingua(shared: Path) -> list[Doc]:
    """Per language, one run of consecutive sentences cut into paragraphs of 5-15 sentences."""
    rng = rng_for("lingua")
    docs = []
    for lang in LINGUA_LANGS:
        path = shared / "lingua-langid" / "sentences" / f"{lang}.txt"
        sentences = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        sizes = [rng.randint(*LINGUA_SENTENCES_PER_DOC) for _ in range(LINGUA_DOCS_PER_LANG)]
        start = rng.randrange(len(sentences) - sum(sizes) + 1)
        sep = "" if lang in NO_SPACE_LANGS else " "
        for k, n in enumerate(sizes):
            docs.append(Doc(f"lingua-{lang}-{k:02d}", sep.join(sentences[start:start + n]),
                            "lingua-langid", None, lang))
            start += n
    return docs


def load_presidio(shared: Path) -> list[dict]:
    """PRESIDIO_STANDALONE + PRESIDIO_SPLICED distinct records, each with its original index."""
    records = json.loads((shared / "presidio" / "synth_dataset_v2.json").read_text(encoding="utf-8"))
    order = list(range(len(records)))
    rng_for("presidio").shuffle(order)
    out, seen = [], set()
    for i in order:
        r = records[i]
        if r["full_text"] in seen:  # templates without PII repeat ("What are my options?")
            continue
        seen.add(r["full_text"])
        for s in r["spans"]:
            if r["full_text"][s["start_position"]:s["end_position"]] != s["entity_value"]:
                raise ValueError(f"presidio record {i}: span {s['start_position']}:{s['end_position']}"
                                 f" does not match its entity_value")
        spans = tuple(sorted(((s["entity_type"], s["start_position"], s["end_position"]) for s in r["spans"]),
                             key=lambda t: (t[1], t[2], t[0])))  # by position
        out.append({"index": i, "text": r["full_text"], "spans": spans})
        if len(out) == PRESIDIO_STANDALONE + PRESIDIO_SPLICED:
            return out
    raise ValueError(f"{shared}/presidio: fewer than {len(out) + 1} distinct sentences")


def presidio_docs(records: list[dict]) -> list[Doc]:
    return [Doc(f"presidio-{r['index']:04d}", r["text"], "presidio", None, "en", pii_spans=r["spans"])
            for r in records]


def splice_pii(docs: list[Doc], records: list[dict]) -> list[Doc]:
    """Insert the records, 1-3 per host, as lines of multi-line c4 documents; returns the docs."""
    rng = rng_for("splice")
    hosts = [i for i, d in enumerate(docs) if d.source == "c4" and d.text.count("\n") >= 2]
    rng.shuffle(hosts)
    out, queue = list(docs), list(records)
    for h in hosts:
        if not queue:
            break
        n = rng.randint(1, 3)
        take, queue = queue[:n], queue[n:]
        lines = out[h].text.split("\n")
        slots = sorted(rng.sample(range(1, len(lines) + 1), len(take)))
        for j, (slot, r) in enumerate(zip(slots, take)):
            lines.insert(slot + j, r["text"])  # +j: the lines already inserted above this one
        starts = [0]
        for line in lines:
            starts.append(starts[-1] + len(line) + 1)
        spans = tuple((t, starts[slot + j] + a, starts[slot + j] + b)
                      for j, (slot, r) in enumerate(zip(slots, take)) for t, a, b in r["spans"])
        out[h] = replace(out[h], text="\n".join(lines), source="c4+presidio", pii_spans=spans)
    if queue:
        raise ValueError(f"splice_pii: {len(queue)} presidio records left over; too few c4 hosts")
    return out


def load_dj_dedup(shared: Path) -> list[Doc]:
    rows = read_jsonl(shared / "dj-dedup-demo" / "demo-dataset-deduplication.jsonl")
    docs = []
    for i, r in enumerate(rows):
        orig, kind = DJ_DEDUP_LABELS.get(i, (None, None))
        docs.append(Doc(f"djdedup-{i:02d}", r["text"], "dj-dedup-demo",
                        dup_of=None if orig is None else f"djdedup-{orig:02d}", dup_kind=kind))
    return docs


def edge_cases() -> list[Doc]:
    return [Doc(f"edge-{i:02d}", t, "edge-case") for i, t in enumerate(EDGE_CASE_TEXTS)]


# Near-duplicate edits: each returns the edited text, or None where it does not apply.

def edit_number(text: str, rng: random.Random, _donors: list[str]) -> str | None:
    numbers = list(re.finditer(r"\d+", text))
    if not numbers:
        return None
    m = rng.choice(numbers)
    n = m.group()
    if len(n) == 4 and n[:2] in ("19", "20"):
        new = str(int(n) + rng.choice((-3, -2, -1, 1, 2, 3)))
    else:
        new = n[:-1] + str((int(n[-1]) + rng.randint(1, 9)) % 10)
    return text[:m.start()] + new + text[m.end():]


def edit_drop_sentence(text: str, rng: random.Random, _donors: list[str]) -> str | None:
    small = [m for m in SENTENCE.finditer(text) if m.start() > 0 and 20 <= len(m.group()) <= len(text) // 10]
    if not small:
        return None
    m = rng.choice(small)
    return text[:m.start()] + text[m.end():]


def edit_add_sentence(text: str, rng: random.Random, donors: list[str]) -> str | None:
    boundaries = [m.end() for m in SENTENCE.finditer(text) if m.end() < len(text)]
    if not boundaries or not donors:
        return None
    at = rng.choice(boundaries)
    sep = "" if text[at - 1].isspace() else " "
    return text[:at] + sep + rng.choice(donors).strip() + " " + text[at:]


def edit_whitespace(text: str, rng: random.Random, _donors: list[str]) -> str | None:
    ops = {" ": "  ", "\n": "\n\n", ",": "", "'": "\u2019", '"': "\u201c"}
    sites = [i for i, c in enumerate(text) if c in ops]
    if len(sites) < 3:
        return None
    for i in sorted(rng.sample(sites, rng.randint(3, min(8, len(sites)))), reverse=True):
        text = text[:i] + ops[text[i]] + text[i + 1:]
    return text.rstrip("\n") + " \n"


def edit_boilerplate(text: str, rng: random.Random, _donors: list[str]) -> str | None:
    where = rng.choice(("header", "footer", "both"))
    if where in ("header", "both"):
        text = rng.choice(BOILERPLATE_HEADERS) + "\n" + text
    if where in ("footer", "both"):
        text = text + "\n" + rng.choice(BOILERPLATE_FOOTERS)
    return text


NEAR_EDITS = {
    "near-number": edit_number,
    "near-drop-sentence": edit_drop_sentence,
    "near-add-sentence": edit_add_sentence,
    "near-whitespace": edit_whitespace,
    "near-boilerplate": edit_boilerplate,
}


def donor_sentences(docs: list[Doc]) -> dict[tuple, list[tuple[str, str]]]:
    """(source, lang) -> [(doc id, sentence)], sentences of 30-300 characters."""
    pool: dict[tuple, list[tuple[str, str]]] = {}
    for d in docs:
        key = (d.source, d.lang)
        pool.setdefault(key, []).extend(
            (d.id, m.group().strip()) for m in SENTENCE.finditer(d.text) if 30 <= len(m.group().strip()) <= 300)
    return pool


def make_duplicates(docs: list[Doc]) -> list[Doc]:
    rng = rng_for("duplicates")
    candidates = [d for d in docs if d.text.strip() and d.source not in ("dj-dedup-demo", "edge-case")]
    n_exact = round(EXACT_DUP_FRACTION * len(docs))
    n_near = round(NEAR_DUP_FRACTION * len(docs))
    exact = rng.sample(candidates, n_exact)
    taken = {d.id for d in exact}
    near_pool = [d for d in candidates
                 if d.id not in taken and d.pii_spans is None and len(d.text) >= NEAR_DUP_MIN_CHARS]
    near = rng.sample(near_pool, n_near)
    pool = donor_sentences(docs)
    kinds = list(NEAR_EDITS)
    planned = [kinds[k % len(kinds)] for k in range(n_near)]  # balanced, before fall-through
    rng.shuffle(planned)

    dups = [replace(d, id=f"xdup-{k:04d}", dup_of=d.id, dup_kind="exact") for k, d in enumerate(exact)]
    for k, d in enumerate(near):
        donors = [s for doc_id, s in pool.get((d.source, d.lang), []) if doc_id != d.id]
        first = kinds.index(planned[k])
        for kind in kinds[first:] + kinds[:first]:  # fall through to the next edit that applies
            text = NEAR_EDITS[kind](d.text, rng, donors)
            if text is not None and text != d.text:
                break
        else:
            raise ValueError(f"make_duplicates: no near-duplicate edit applies to {d.id}")
        dups.append(replace(d, id=f"ndup-{k:04d}", text=text, dup_of=d.id, dup_kind=kind))
    return dups


def assign_shards(docs: list[Doc], dups: list[Doc]) -> list[list[Doc]]:
    """Originals round-robin after a shuffle; exact copies always land in another shard."""
    rng = rng_for("shards")
    order = list(docs)
    rng.shuffle(order)
    shard_of = {d.id: i % N_SHARDS for i, d in enumerate(order)}
    shards = [[] for _ in range(N_SHARDS)]
    for d in order:
        shards[shard_of[d.id]].append(d)
    for d in dups:
        if d.dup_kind == "exact":
            shard = (shard_of[d.dup_of] + rng.randint(1, N_SHARDS - 1)) % N_SHARDS
        else:
            shard = rng.randrange(N_SHARDS)
        shards[shard].append(d)
    for s in shards:
        rng.shuffle(s)
    return shards


def check(shards: list[list[Doc]]) -> None:
    docs = [d for s in shards for d in s]
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        raise ValueError("build_sample: duplicate ids")
    first_with_text: dict[str, Doc] = {}
    for d in sorted(docs, key=lambda d: (d.dup_of is not None, d.id)):
        d.text.encode("utf-8")  # raises on lone surrogates
        for _, start, end in d.pii_spans or ():
            if not 0 <= start < end <= len(d.text):
                raise ValueError(f"build_sample: {d.id}: pii span {start}:{end} outside the text")
        seen = first_with_text.setdefault(d.text, d)
        if seen is not d and d.dup_of is None:
            raise ValueError(f"build_sample: {d.id} repeats the text of {seen.id} but has no dup_of")


def copy_licenses(shared: Path, out: Path) -> None:
    (out / "licenses").mkdir(parents=True, exist_ok=True)
    for name, parts in LICENSE_COPIES.items():
        (out / "licenses" / name).write_bytes(shared.joinpath(*parts).read_bytes())


def write_shards(shards: list[list[Doc]], raw_dir: Path) -> list[Path]:
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, shard in enumerate(shards):
        columns = {f: [getattr(d, "lang" if f == "source_lang" else f) for d in shard]
                   for f in SCHEMA.names}
        columns["pii_spans"] = [None if s is None else [{"entity_type": t, "start": a, "end": b} for t, a, b in s]
                                for s in columns["pii_spans"]]
        table = pa.table(columns, schema=SCHEMA)
        path = raw_dir / f"shard-{k:04d}.parquet"
        pq.write_table(table, path, compression="zstd", compression_level=9)
        paths.append(path)
    return paths


def summary(shards: list[list[Doc]], paths: list[Path]) -> str:
    def mb(docs: list[Doc]) -> float:
        return sum(len(d.text.encode("utf-8")) for d in docs) / 1e6

    docs = [d for s in shards for d in s]
    by_source: dict[str, list[Doc]] = {}
    for d in sorted(docs, key=lambda d: d.source):
        by_source.setdefault(d.source, []).append(d)
    lines = ["| source | docs | originals | exact dups | near dups | text MB |", "|---|--:|--:|--:|--:|--:|"]
    for source, ds in by_source.items():
        orig = sum(d.dup_of is None for d in ds)
        exact = sum(d.dup_kind == "exact" for d in ds)
        lines.append(f"| {source} | {len(ds)} | {orig} | {exact} | {len(ds) - orig - exact} | {mb(ds):.2f} |")
    n_orig = sum(d.dup_of is None for d in docs)
    n_exact = sum(d.dup_kind == "exact" for d in docs)
    lines.append(f"| **total** | **{len(docs)}** | **{n_orig}** | **{n_exact}** | **{len(docs) - n_orig - n_exact}**"
                 f" | **{mb(docs):.2f}** |")
    lines += ["", "| shard | docs | text MB | file MB |", "|---|--:|--:|--:|"]
    for shard, path in zip(shards, paths):
        lines.append(f"| {path.name} | {len(shard)} | {mb(shard):.2f} | {path.stat().st_size / 1e6:.2f} |")
    kinds: dict[str, int] = {}
    for d in sorted(docs, key=lambda d: d.dup_kind or ""):
        if d.dup_kind:
            kinds[d.dup_kind] = kinds.get(d.dup_kind, 0) + 1
    pii = [d for d in docs if d.pii_spans is not None]
    lines += ["", "| dup_kind | docs |", "|---|--:|"] + [f"| {k} | {n} |" for k, n in kinds.items()]
    lines += ["", f"pii_spans: {len(pii)} annotated docs, {sum(len(d.pii_spans) for d in pii)} spans"]
    return "\n".join(lines)


def main() -> None:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=here.parents[2] / "shared" / "data",
                        help="folder holding the sources listed in MANIFEST.md")
    parser.add_argument("--out", type=Path, default=here.parent / "sample", help="writes <out>/raw/shard-*.parquet")
    args = parser.parse_args()
    if not (args.shared / "MANIFEST.md").is_file():
        raise SystemExit(f"--shared {args.shared}: no MANIFEST.md there; point --shared at the shared data folder")

    presidio = load_presidio(args.shared)
    docs = (load_c4(args.shared) + load_dolma(args.shared) + load_gutenberg(args.shared)
            + load_wiki(args.shared) + load_state_union(args.shared) + load_lingua(args.shared)
            + presidio_docs(presidio[:PRESIDIO_STANDALONE]) + load_dj_dedup(args.shared) + edge_cases())
    docs = splice_pii(docs, presidio[PRESIDIO_STANDALONE:])
    shards = assign_shards(docs, make_duplicates(docs))
    check(shards)
    paths = write_shards(shards, args.out / "raw")
    copy_licenses(args.shared, args.out)
    print(summary(shards, paths))


if __name__ == "__main__":
    main()
