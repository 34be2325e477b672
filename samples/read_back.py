"""Print every entry of an image with its mode, size and content (or link target)."""

import os
import sys

import rafs

bootstrap, blob_dir = sys.argv[1], sys.argv[2]
with rafs.open(bootstrap, blob_dir=blob_dir, validate=True) as image:
    print(image)
    for raw_path, inode in image.iter_entries("/"):
        path = os.fsdecode(raw_path)
        st = image.lstat(path)
        if inode.is_symlink:
            detail = f"-> {image.readlink(path)}"
        elif inode.is_reg:
            detail = repr(image.read(path))
        else:
            detail = ""
        print(f"{st.filemode} ino={st.st_ino:<4} {st.st_size:>6}  {path}  {detail}")
