#!/usr/bin/env python3
"""Scrapy's side of benches/compare: fetch every URL of a file, one JSON line per response.

    python spider.py URLS OUTPUT --mode fifo|polite --concurrency N [--delay S] [--limit N]

Run with the Python of the venv `run` makes. One process (CrawlerProcess), Scrapy's default
middlewares (retries and redirects as downpour has them), the settings of Scrapy's own
"broad crawls" advice that do not change what is fetched (cookies off, little logging, the
downloader-aware priority queue, which is also the default of recent versions), and:

- fifo: CONCURRENT_REQUESTS = CONCURRENT_REQUESTS_PER_DOMAIN = N, no delay;
- polite: DOWNLOAD_DELAY = delay with no jitter, CONCURRENT_REQUESTS_PER_DOMAIN = 1,
  CONCURRENT_REQUESTS = N (`run` passes 4 x hosts: Scrapy counts the requests waiting
  in a host's slot against it, so hosts alone would starve slots).
Both: ROBOTSTXT_OBEY = False (downpour runs with --allow-all), AUTOTHROTTLE off.
"""

import argparse
import itertools

import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.settings import default_settings


class ListSpider(scrapy.Spider):
    name = "list"

    def __init__(self, urls_path, limit, **kwargs):
        super().__init__(**kwargs)
        self.urls_path = urls_path
        self.limit = limit

    def _urls(self):
        with open(self.urls_path) as f:
            lines = (line.strip() for line in f)
            urls = (u for u in lines if u and not u.startswith("#"))
            yield from itertools.islice(urls, self.limit)

    async def start(self):
        for url in self._urls():
            yield scrapy.Request(url, callback=self.parse, errback=self.failed, dont_filter=True)

    def start_requests(self):  # Scrapy < 2.13
        for url in self._urls():
            yield scrapy.Request(url, callback=self.parse, errback=self.failed, dont_filter=True)

    def parse(self, response):
        yield {"url": response.url, "status": response.status, "body_length": len(response.body)}

    def failed(self, failure):
        yield {"url": failure.request.url, "error": repr(failure.value)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("urls")
    p.add_argument("output")
    p.add_argument("--mode", choices=["fifo", "polite"], required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.1)
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args()

    settings = {
        "LOG_LEVEL": "WARNING",
        "CONCURRENT_ITEMS": 1,  # one item per response: not 100 asyncio tasks per response
        "TELNETCONSOLE_ENABLED": False,
        "COOKIES_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "AUTOTHROTTLE_ENABLED": False,
        "SCHEDULER_PRIORITY_QUEUE": "scrapy.pqueues.DownloaderAwarePriorityQueue",
        "CONCURRENT_REQUESTS": a.concurrency,
        "FEEDS": {a.output: {"format": "jsonlines", "overwrite": True}},
    }
    if a.mode == "fifo":
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = a.concurrency
        settings["DOWNLOAD_DELAY"] = 0
    else:
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = 1
        settings["DOWNLOAD_DELAY"] = a.delay
        if hasattr(default_settings, "DOWNLOAD_DELAY_JITTER"):
            settings["DOWNLOAD_DELAY_JITTER"] = 0
        else:
            settings["RANDOMIZE_DOWNLOAD_DELAY"] = False
    process = CrawlerProcess(settings)
    process.crawl(ListSpider, urls_path=a.urls, limit=a.limit)
    process.start()


if __name__ == "__main__":
    main()
