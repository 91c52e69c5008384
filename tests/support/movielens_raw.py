"""A tiny hand-written raw MovieLens-100K folder (u.genre, u.user, u.item, u.data)."""

from __future__ import annotations

from pathlib import Path


GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def genre_flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def write_raw(folder: Path, data_lines=None, user_lines=None, item_lines=None) -> Path:
    """A tiny hand-written MovieLens-100K folder: 3 users, 4 items, 6 ratings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    users = user_lines or ["1|24|M|technician|85711", "2|53|F|other|94043",
                           "3|23|M|writer|T8H1N"]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    items = item_lines or [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{genre_flags('Animation', 'Comedy')}",
        f"2|Misérables, Les (1995)|01-01-1995||http://x|{genre_flags('Drama', 'Musical')}",
        f"3|Mystery Film (1971)|||http://x|{genre_flags('unknown')}",
        f"4|Mixed (1996)|22-May-1996||http://x|{genre_flags('unknown', 'Drama')}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    data = data_lines or ["1\t1\t5\t881250949", "1\t2\t3\t881250950", "2\t1\t4\t891717742",
                          "2\t3\t1\t878887116", "3\t4\t2\t880606923", "3\t2\t5\t886397596"]
    (folder / "u.data").write_text("\n".join(data) + "\n")
    return folder
