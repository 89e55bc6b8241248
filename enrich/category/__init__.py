"""Category paths for new listings: the neighbours' vote, the index's TF-IDF category model and the fine-tuned
tagger, mixed (`vote`); training the tagger (`finetune`)."""
