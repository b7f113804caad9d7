using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workflows.Tests;

public class PlacementTests
{
    private static int[] Chunks(int count, int pages = 512) => [.. Enumerable.Repeat(pages, count)];

    [Fact]
    public void The_main_host_takes_the_lowest_pages_and_the_rest_is_split_by_capacity()
    {
        var plan = Placement.Plan(Chunks(100), 512, new Destination("main", 10 * 512), [new("a", 60 * 512), new("b", 30 * 512)]);

        Assert.Equal(
            [new Assignment("main", 0, 10 * 512, 10 * 512), new Assignment("a", 10 * 512, 70 * 512, 60 * 512), new Assignment("b", 70 * 512, 100 * 512, 30 * 512)],
            plan.Assignments);
    }

    [Fact]
    public void Sub_hosts_share_the_rest_in_proportion_to_capacity_not_first_come()
    {
        var plan = Placement.Plan(Chunks(40), 512, new Destination("main", 0), [new("a", 100 * 512), new("b", 100 * 512)]);

        Assert.Equal([20 * 512, 20 * 512], plan.Assignments.Select(a => a.Pages));
    }

    [Fact]
    public void Every_page_is_placed_once_and_ranges_are_contiguous()
    {
        var loads = Enumerable.Range(0, 300).Select(i => i % 7 == 0 ? 0 : 100 + i % 400).ToArray(); // holes and partly filled chunks
        var plan = Placement.Plan(loads, 512, new Destination("main", 20000), [new("a", 30000), new("b", 25000), new("c", 40000)]);

        Assert.Equal(loads.Sum(), plan.Assignments.Sum(a => a.Pages));
        Assert.Equal(0, plan.Assignments[0].FirstPfn);
        for (var i = 1; i < plan.Assignments.Count; i++)
        {
            Assert.Equal(plan.Assignments[i - 1].EndPfn, plan.Assignments[i].FirstPfn);
        }
        var capacities = new Dictionary<string, long> { ["main"] = 20000, ["a"] = 30000, ["b"] = 25000, ["c"] = 40000 };
        Assert.All(plan.Assignments, a => Assert.True(a.Pages <= capacities[a.Host], $"{a.Host} over capacity"));
    }

    [Fact]
    public void The_same_inputs_give_the_same_plan()
    {
        var loads = Enumerable.Range(0, 500).Select(i => (i * 37) % 512).ToArray();
        Destination[] subs = [new("a", 50000), new("b", 70000)];
        Assert.Equal(Placement.Plan(loads, 512, new("main", 30000), subs).Assignments, Placement.Plan(loads, 512, new("main", 30000), subs).Assignments);
    }

    [Fact]
    public void Destinations_too_small_for_the_vm_are_refused_with_the_numbers()
    {
        var e = Assert.Throws<PlacementException>(() => Placement.Plan(Chunks(100), 512, new Destination("main", 10000), [new("a", 20000), new("b", 10000)]));

        Assert.Contains("51200 pages", e.Message, StringComparison.Ordinal);
        Assert.Contains("40000", e.Message, StringComparison.Ordinal);
        Assert.Contains("nothing was moved", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Enough_pages_in_total_but_no_host_can_take_a_whole_chunk_is_refused()
    {
        var e = Assert.Throws<PlacementException>(() => Placement.Plan(Chunks(4), 512, new Destination("main", 600), [new("a", 600), new("b", 600), new("c", 600)]));

        Assert.Contains("fit no destination", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("main", "main")]
    [InlineData("a", "a")]
    public void A_host_named_twice_or_a_negative_capacity_is_refused(string first, string second)
    {
        Assert.Throws<PlacementException>(() => Placement.Plan(Chunks(4), 512, new Destination(first, 5000), [new(second, 5000), new("z", 5000)]));
        Assert.Throws<PlacementException>(() => Placement.Plan(Chunks(4), 512, new Destination("m", -1), [new("z", 5000)]));
    }
}
