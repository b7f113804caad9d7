using SEmigrate.Contracts;
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
    Func<PageIntegrityException, ValueTask>? onViolation = null)
{
    private long fetched;

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
        await Task.WhenAll(remote.Select(r => FetchAsync(r.Key, r.Value, pfns, pages, ct)));
    }

    private async Task FetchAsync(string host, List<int> indexes, ulong[] pfns, Memory<byte> pages, CancellationToken ct)
    {
        var wanted = indexes.Select(i => pfns[i]).ToArray();
        IReadOnlyList<PageRecord> records = [];
        await CheckedAsync(wanted[0], host, async () =>
        {
            try
            {
                records = await client.FetchAsync(host, codec.Vm, wanted, ct);
            }
            catch (PageProtocolException e) when (e.Code is PageError.Malformed or PageError.UnknownPage)
            {
                throw new PageIntegrityException(codec.Vm, wanted[0], host, e.Message);
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

    public async Task PageOutAsync(ulong pfn, ReadOnlyMemory<byte> page, CancellationToken ct = default)
    {
        var version = table[pfn].Version + 1;
        var record = codec.Encode(pfn, version, PageClass.Sealed, page.Span);
        await client.PageOutAsync(hostOf(pfn), codec.Vm, [record], ct);
        table.Set(pfn, record.Class, version);
    }
}
