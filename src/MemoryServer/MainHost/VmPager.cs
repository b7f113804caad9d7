using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer.MainHost;

/// <summary>The main host's pager for one VM after switch-over: the one component through which the
/// VM's pages are read and paged out. A free page (by the main host's table) is zeros and is never
/// fetched; a page placed at this host is read from its own store (<paramref name="local"/>), where
/// the source's transfer put it; any other is paged in from the sub-host that holds it, one request per
/// sub-host for a run of pages. Every page is checked (page number, class, version against the table,
/// GCM or GMAC tag) before a byte of it is used. A failed check, a malformed reply or a page the host
/// does not have is a security event: reported through <paramref name="onViolation"/> and thrown, never
/// retried into wrong data. Page-out seals the page under a bumped version (a page written after the
/// scan is sealed: fail closed) and moves the table forward only once the sub-host has stored it; the
/// caller drops its copy only after that.</summary>
public sealed class VmPager(
    PageClient client, PageCodec codec, PageTable table, Func<ulong, string> hostOf, string self, IPageStore? local,
    Func<PageIntegrityException, ValueTask>? onViolation = null, Func<PageProtocolException, ulong, int, ValueTask>? onUnavailable = null)
{
    private long fetched;
    private readonly Lock statsGate = new();
    private readonly Dictionary<string, HostPaging> interval = new(StringComparer.Ordinal);
    private readonly List<double> latencies = [];

    /// <summary>Pages paged in from sub-hosts so far.</summary>
    public long FetchedPages => Interlocked.Read(ref fetched);


    public Task PageInAsync(ulong pfn, Memory<byte> page, CancellationToken ct = default) => ReadAsync([pfn], page, ct);

    /// <summary>Reads <paramref name="pfns"/> into <paramref name="pages"/> (4 KiB each, in that order).</summary>
    public async Task ReadAsync(ulong[] pfns, Memory<byte> pages, CancellationToken ct = default)
    {
        if (pages.Length != pfns.Length * PageRecord.PageSize)
        {
            throw new ArgumentException($"{pfns.Length} pages need {pfns.Length * PageRecord.PageSize} bytes, not {pages.Length}", nameof(pages));
        }
        var remote = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (var i = 0; i < pfns.Length; i++)
        {
            var page = pages.Slice(i * PageRecord.PageSize, PageRecord.PageSize);
            if (table[pfns[i]].Class == PageClass.Zero)
            {
                page.Span.Clear();
                continue;
            }
            var host = hostOf(pfns[i]);
            if (host == self && local is not null)
            {
                var stored = local.Get(codec.Vm, pfns[i]);
                await CheckedAsync(pfns[i], host, () => codec.Open(pfns[i], stored is null ? Missing(pfns[i], host) : PageFrame.ReadRecord(stored), table, host, page.Span));
                continue;
            }
            if (!remote.TryGetValue(host, out var at))
            {
                remote[host] = at = [];
            }
            at.Add(i);
        }
        await Task.WhenAll(remote.SelectMany(r => r.Value.Chunk(PageFrame.MaxFetchPages).Select(part => FetchAsync(r.Key, part, pfns, pages, ct))));
    }

    private async Task FetchAsync(string host, int[] indexes, ulong[] pfns, Memory<byte> pages, CancellationToken ct)
    {
        var wanted = indexes.Select(i => pfns[i]).ToArray();
        IReadOnlyList<PageRecord> records = [];
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        await CheckedAsync(wanted[0], host, async () =>
        {
            try
            {
                records = await client.FetchAsync(host, codec.Vm, wanted, ct);
                Count(host, wanted.Length, records.Sum(r => (long)r.WireSize), 0, 0, System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            }
            catch (PageProtocolException e) when (e.Code is PageError.Malformed or PageError.UnknownPage)
            {
                throw new PageIntegrityException(codec.Vm, wanted[0], host, e.Message);
            }
            catch (PageProtocolException e) when (onUnavailable is not null)
            {
                // The host is down or does not answer: no wrong page, but none at all (reported, then thrown).
                await onUnavailable(e, wanted[0], wanted.Length);
                throw;
            }
            if (records.Count != wanted.Length)
            {
                throw new PageIntegrityException(codec.Vm, wanted[0], host, $"{wanted.Length} pages asked for, {records.Count} returned");
            }
        });
        for (var i = 0; i < wanted.Length; i++)
        {
            await CheckedAsync(wanted[i], host, () => codec.Open(wanted[i], records[i], table, host, pages.Slice(indexes[i] * PageRecord.PageSize, PageRecord.PageSize).Span));
        }
        Interlocked.Add(ref fetched, wanted.Length);
    }

    /// <summary>Paging per host since the last report, and page-in request latency percentiles (ms);
    /// the counts start again from zero.</summary>
    public (IReadOnlyList<HostPaging> Hosts, double P50Ms, double P99Ms) TakeReport()
    {
        lock (statsGate)
        {
            var sorted = latencies.Order().ToList();
            double At(int p) => sorted.Count == 0 ? 0 : sorted[Math.Min(sorted.Count - 1, sorted.Count * p / 100)];
            (IReadOnlyList<HostPaging>, double, double) report = ([.. interval.Values.OrderBy(h => h.Host, StringComparer.Ordinal)], At(50), At(99));
            interval.Clear();
            latencies.Clear();
            return report;
        }
    }

    private void Count(string host, long pagesIn, long bytesIn, long pagesOut, long bytesOut, double? latencyMs)
    {
        lock (statsGate)
        {
            var h = interval.GetValueOrDefault(host) ?? new HostPaging(host, 0, 0, 0, 0);
            interval[host] = h with { PagesIn = h.PagesIn + pagesIn, BytesIn = h.BytesIn + bytesIn, PagesOut = h.PagesOut + pagesOut, BytesOut = h.BytesOut + bytesOut };
            if (latencyMs is { } ms && latencies.Count < 100_000)
            {
                latencies.Add(ms);
            }
        }
    }

    private PageRecord Missing(ulong pfn, string host) => throw new PageIntegrityException(codec.Vm, pfn, host, $"page 0x{pfn:x} is missing from this host's own store");

    private Task CheckedAsync(ulong pfn, string host, Action check) => CheckedAsync(pfn, host, () =>
    {
        check();
        return Task.CompletedTask;
    });

    private async Task CheckedAsync(ulong pfn, string host, Func<Task> check)
    {
        try
        {
            await check();
        }
        catch (PageIntegrityException e)
        {
            if (onViolation is not null)
            {
                await onViolation(e);
            }
            throw;
        }
    }

    public Task PageOutAsync(ulong pfn, ReadOnlyMemory<byte> page, CancellationToken ct = default) => PageOutAsync([(pfn, page)], ct);

    /// <summary>Pages out several pages, one request per host that holds them (this host's own share
    /// goes to its own store); each page's table entry moves on once its host has it.</summary>
    public async Task PageOutAsync(IReadOnlyList<(ulong Pfn, ReadOnlyMemory<byte> Page)> pages, CancellationToken ct = default)
    {
        await Task.WhenAll(pages.GroupBy(p => hostOf(p.Pfn)).Select(async group =>
        {
            var records = group.Select(p => codec.Encode(p.Pfn, table[p.Pfn].Version + 1, PageClass.Sealed, p.Page.Span, group.Key)).ToList();
            if (group.Key == self && local is not null)
            {
                local.Put(codec.Vm, records);
            }
            else
            {
                await client.PageOutAsync(group.Key, codec.Vm, records, ct);
            }
            foreach (var r in records)
            {
                table.Set(r.Pfn, r.Class, r.Version);
            }
            Count(group.Key, 0, 0, records.Count, records.Sum(r => (long)r.WireSize), null);
        }));
    }
}
