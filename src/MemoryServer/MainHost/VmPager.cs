using SEmigrate.Contracts;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer.Client;
using SEmigrate.Sealing;

namespace SEmigrate.MemoryServer.MainHost;

/// <summary>The main host's end of remote paging. Page-in fetches a page from the sub-host that holds
/// it and checks it (page number, class, version against our own table, GCM tag) before a byte reaches
/// the guest; any failure, a malformed reply included, is a security event: reported through
/// <paramref name="onViolation"/> and thrown, never retried into wrong data. Page-out seals the page
/// under a bumped version (a page written after the scan is sealed: fail closed) and moves the table
/// forward only once the sub-host has stored it; the caller drops its copy only after that.</summary>
public sealed class RemotePager(
    PageClient client, PageCodec codec, PageTable table, Func<ulong, string> hostOf,
    Func<PageIntegrityException, ValueTask>? onViolation = null)
{
    public async Task PageInAsync(ulong pfn, Memory<byte> page, CancellationToken ct = default)
    {
        var host = hostOf(pfn);
        try
        {
            IReadOnlyList<PageRecord> records;
            try
            {
                records = await client.FetchAsync(host, codec.Vm, [pfn], ct);
            }
            catch (PageProtocolException e) when (e.Code == PageError.Malformed)
            {
                throw new PageIntegrityException(codec.Vm, pfn, host, e.Message);
            }
            if (records.Count != 1)
            {
                throw new PageIntegrityException(codec.Vm, pfn, host, $"one page asked for, {records.Count} returned");
            }
            codec.Open(pfn, records[0], table, host, page.Span);
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
