using System.Collections.Concurrent;
using SEmigrate.Contracts.Paging;
using SEmigrate.Guest.Fuse;
using SEmigrate.MemoryServer.MainHost;

namespace SEmigrate.Activities;

/// <summary>A running guest's RAM at the main host, as the FUSE file its QEMU maps: a page the guest
/// wrote here is kept as its latest copy; any other is read through the VM's pager (zeros for a free
/// page, this host's share from its store, the rest paged in from the sub-hosts, every page checked),
/// one pager call per FUSE read, so a 2 MiB fault costs one request per sub-host. Written pages stay in
/// this process (no eviction to the sub-hosts yet).</summary>
internal sealed class PagedRam(VmPager pager, ulong pfnLimit, long size) : IRamFile
{
    private const int Page = PageRecord.PageSize;
    private readonly ConcurrentDictionary<ulong, byte[]> written = new();

    public long Size => size;

    /// <summary>Pages the guest wrote here.</summary>
    public int WrittenPages => written.Count;

    public async ValueTask ReadAsync(long offset, Memory<byte> data)
    {
        var (first, end) = ((ulong)(offset / Page), (ulong)((offset + data.Length + Page - 1) / Page));
        var pages = new byte[(int)(end - first) * Page];
        var wanted = new List<ulong>();
        for (var pfn = first; pfn < end; pfn++)
        {
            var at = pages.AsSpan((int)(pfn - first) * Page, Page);
            if (written.TryGetValue(pfn, out var latest))
            {
                latest.CopyTo(at);
            }
            else if (pfn < pfnLimit)
            {
                wanted.Add(pfn);
            }
        }
        if (wanted.Count > 0)
        {
            var read = new byte[wanted.Count * Page];
            await pager.ReadAsync([.. wanted], read);
            for (var i = 0; i < wanted.Count; i++)
            {
                read.AsSpan(i * Page, Page).CopyTo(pages.AsSpan((int)(wanted[i] - first) * Page));
            }
        }
        pages.AsSpan((int)(offset - (long)first * Page), data.Length).CopyTo(data.Span);
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data)
    {
        for (var at = 0; at < data.Length;)
        {
            var pfn = (ulong)((offset + at) / Page);
            var within = (int)((offset + at) % Page);
            var length = Math.Min(Page - within, data.Length - at);
            if (!written.TryGetValue(pfn, out var page))
            {
                page = new byte[Page];
                if (within != 0 || length != Page)
                {
                    await ReadAsync((long)pfn * Page, page); // a part of a page: the rest as it is now
                }
            }
            data.Span.Slice(at, length).CopyTo(page.AsSpan(within));
            written[pfn] = page;
            at += length;
        }
    }
}
