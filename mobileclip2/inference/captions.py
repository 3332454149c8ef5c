"""Built-in real captions: what int8 text graphs are calibrated (NNCF) and checked on at build time.

Why real captions and not random token ids: a tokenized caption is a start token, a few words, an
end token and zero padding, and the text tower's activations on it differ from those on 77 random
ids (no end token, no padding) enough that int8 calibrated or judged on random ids says little (NNCF
text int8 of MobileCLIP2-S0 reached a cosine of 0.998 to fp32 on real captions, 0.647 on random ids).
The two lists are disjoint and of varied lengths, from one word to a long sentence.
"""

from __future__ import annotations

__all__ = ["CALIBRATION_CAPTIONS", "CHECK_CAPTIONS"]

CALIBRATION_CAPTIONS = (
    "a photo of a dog",
    "a cat sleeping on a sofa",
    "two people riding bicycles in the park",
    "a red car parked on the street",
    "a bowl of fresh fruit on a wooden table",
    "a child playing with a ball on the beach",
    "a plate of spaghetti with tomato sauce",
    "a snowy mountain under a clear blue sky",
    "an old man reading a newspaper",
    "a bird perched on a branch",
    "a city skyline at night",
    "a group of friends having dinner",
    "a black and white photo of a horse",
    "a laptop on a desk next to a cup of coffee",
    "a sailboat on a calm lake at sunset",
    "a close-up of a yellow flower",
    "a woman holding an umbrella in the rain",
    "a train arriving at the station",
    "a pizza with mushrooms and olives",
    "a dog catching a frisbee",
    "people walking through a crowded market",
    "a small wooden cabin in the forest",
    "a baby smiling at the camera",
    "a football player kicking the ball",
    "a kitchen with white cabinets",
    "an airplane flying above the clouds",
    "a bridge over a river in autumn",
    "a man surfing a large wave",
    "a stack of books on a shelf",
    "a chocolate cake with candles",
    "a tiger walking in the grass",
    "a street musician playing guitar",
    "a bedroom with a large window",
    "a glass of red wine",
    "a lighthouse on a rocky coast",
    "a cup of tea",
    "sunflowers",
    "a diagram",
    "a screenshot of a spreadsheet with numbers and charts",
    "an elderly couple walking hand in hand along a quiet tree-lined road in the early morning fog",
    "a photo of a golden retriever on a beach.",
)
"""What NNCF's observers see when it quantizes a text graph."""

CHECK_CAPTIONS = (
    "a photo of a cat.",
    "dog",
    "a car",
    "a photo of a airplane .",
    "a blurry photo of a bicycle",
    "a painting of a ship in a storm",
    "a sandwich cut in half on a white plate",
    "a giraffe eating leaves from a tall tree",
    "a view of the ocean from a cliff",
    "a computer keyboard",
    "children swimming in a pool",
    "a close-up photo of a person's hands typing on a laptop keyboard in a dimly lit office",
    "a vintage poster advertising a circus with elephants, clowns and acrobats in bright colours and bold "
    "lettering",
    "an orange",
    "a tattoo of a rose",
    "snow",
    "a map of europe",
)
"""Held out from calibration: the int8 graph's cosine to fp32 is measured on these."""
