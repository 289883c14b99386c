#!/usr/bin/env python3
"""Prints the library version from include/sparsekv/version.h (the single source of truth)."""
import os
import re

here = os.path.dirname(os.path.abspath(__file__))
text = open(os.path.join(here, '..', 'include', 'sparsekv', 'version.h')).read()
parts = [re.search(r'#define SKV_API_VERSION_%s (\d+)' % p, text).group(1)
         for p in ('MAJOR', 'MINOR', 'PATCH')]
print('.'.join(parts))
