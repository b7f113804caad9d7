namespace SEmigrate.Contracts.Paging;

/// <summary>The one naming scheme for page traffic: a control queue per memory server (start a VM,
/// usage), and per VM at that server a bulk queue (store, page-out, release) and a fetch queue
/// (page-in, kept apart so page faults never wait behind bulk batches). All are bound to one direct
/// exchange, so an operator (or a test) can tap them.</summary>
public static class PageQueues
{
    public const string Exchange = "semigrate.pages";

    public static string Control(string host) => $"semigrate.pages.{host}";

    public static string Bulk(string host, Guid vm) => $"semigrate.pages.{host}.{vm:N}.bulk";

    public static string Fetch(string host, Guid vm) => $"semigrate.pages.{host}.{vm:N}.fetch";
}
