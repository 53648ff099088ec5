"""Raw engine text -> clean Markdown and layout blocks in page pixels."""
