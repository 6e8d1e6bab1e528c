#!/usr/bin/env python3
"""File-level import graph of Rust crates: an edge A -> B when file A uses an
item *defined* in file B (paths through crate::, super::, self:: or a child
module; `pub use` re-exports are followed to the defining file; `mod x;`
declarations are not uses). Test modules (#[cfg(test)] mod ... { } at a
file's end, and files named tests.rs / *_tests.rs) are left out. Prints
every strongly connected component of more than one file; exit 1 if any."""
import os, re, sys

ITEM = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+|async\s+|const\s+)*(?:struct|enum|fn|const|static|trait|type|union|macro_rules!)\s+(\w+)', re.M)

def strip_tests(text):
    cut = re.search(r'#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{', text)
    text = text[:cut.start()] if cut else text
    # comments (doc links are not uses); a "//" inside a string cuts the
    # line short, which can only hide an edge, never add one
    return re.sub(r'//[^\n]*', '', text)

def modfiles(src):
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            if not n.endswith('.rs'): continue
            p = os.path.join(root, n)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('tests',) or rel[-1].endswith('_tests'): continue
            if rel[-1] == 'mod': rel = rel[:-1]
            if rel in (['lib'], ['main']): rel = []
            if rel and rel[0] == 'bin': continue
            files[tuple(rel)] = (p, strip_tests(open(p).read()))
    return files

def reexports(files):
    """name -> absolute path list, per module, from `pub use` lines."""
    out = {}
    for m, (p, text) in files.items():
        d = {}
        for body in re.findall(r'^\s*pub(?:\([^)]*\))?\s+use\s+([^;]+);', text, re.M):
            body = ' '.join(body.split())
            mm = re.match(r'(.*?)::\{(.*)\}$', body)
            items = []
            if mm:
                for it in mm.group(2).split(','):
                    it = it.strip()
                    if it: items.append((mm.group(1), it))
            else:
                pre, _, last = body.rpartition('::')
                items.append((pre, last))
            for pre, it in items:
                name = it.split(' as ')[-1].strip()
                src = it.split(' as ')[0].strip()
                d[name] = (pre, src)
        out[m] = d
    return out

def absolute(m, is_modrs, segs):
    # A path that starts with a child module's name is relative to the
    # module itself, whether its file is `x/mod.rs` or `x.rs` beside `x/`
    # (Rust 2018); `super` is the parent either way.
    here = list(m)
    root, segs = segs[0], segs[1:]
    if root == 'crate': base = []
    elif root == 'self': base = list(m)
    elif root == 'super': base = list(m[:-1])
    else: base = here + [root]
    while segs and segs[0] == 'super':
        base = base[:-1]; segs = segs[1:]
    return base + segs

def locate(files, rex, path, depth=0):
    """The file defining what `path` names."""
    for i in range(len(path), -1, -1):
        mod = tuple(path[:i])
        if mod not in files: continue
        rest = path[i:]
        if not rest or depth > 8: return mod
        name = rest[0]
        if name in rex[mod]:
            pre, src = rex[mod][name]
            p, text = files[mod]
            is_modrs = p.endswith(('mod.rs', 'lib.rs', 'main.rs'))
            segs = (pre + '::' + src).split('::') if pre else [src]
            if segs[0] not in ('crate', 'self', 'super') and tuple(list(mod) + [segs[0]]) not in files \
               and tuple(list(mod[:-1]) + [segs[0]]) not in files:
                return None  # an external crate's item
            return locate(files, rex, absolute(mod, is_modrs, segs), depth + 1)
        return mod
    return None

def edges(files):
    rex = reexports(files)
    out = {m: set() for m in files}
    pat = re.compile(r'(?<![\w:])((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)')
    for m, (p, text) in files.items():
        is_modrs = p.endswith(('mod.rs', 'lib.rs', 'main.rs'))
        kids = set(re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', text, re.M))
        paths = [x.split('::') for x in pat.findall(text)]
        for k in kids:
            for rest in re.findall(r'(?<![\w:])' + k + r'((?:::[A-Za-z_][A-Za-z0-9_]*)+)', text):
                paths.append([k] + rest.strip(':').split('::'))
        # grouped imports: use crate::a::{b, c::D}
        for pre, body in re.findall(r'\buse\s+((?:crate|super|self)(?:::\w+)*)::\{([^;]*?)\};', text, re.S):
            for it in re.split(r'[,\s]+', re.sub(r'\{[^}]*\}', '', body)):
                it = it.strip()
                if it and it != 'self': paths.append(pre.split('::') + it.split('::'))
        for segs in paths:
            t = locate(files, rex, absolute(m, is_modrs, segs))
            if t is not None and t != m: out[m].add(t)
    return out

def sccs(g):
    index, low, stack, on, res, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def sc(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in g[v]:
            if w not in index: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: res.append(comp)
    for v in g:
        if v not in index: sc(v)
    return res

bad = 0
for src in sys.argv[1:]:
    f = modfiles(src); g = edges(f)
    for comp in sccs(g):
        bad += 1
        print(src, 'cycle:', ' <-> '.join('::'.join(c) or 'crate' for c in comp))
        for a in comp:
            for b in sorted(g[a]):
                if b in comp: print('   ', '::'.join(a) or 'crate', '->', '::'.join(b) or 'crate')
sys.exit(1 if bad else 0)
